package main

// The kubelet's PodResources API (v1, plus v1alpha1 as the kubelet also
// serves it), served with the kubelet's own server code
// (k8s.io/kubernetes/pkg/kubelet/apis/podresources) and wired like
// server.ListenAndServePodResources: a gRPC server with the kubelet's rate
// limiter, the socket created by cri-client's CreateListener (unlink, listen
// on a temp name, rename into place).
//
// Providers, as the kubelet wires them (Devices/Cpus/Memory/DynamicResources
// are its container manager, Pods its pod manager):
//   - Devices: the harness's current device manager, converted to the API's
//     ContainerDevices the way the container manager does (one entry per
//     device and NUMA node; no topology -> one entry without topology). The
//     adapter looks the manager up on every call, so the socket keeps
//     answering across the "restart" op, from the new manager.
//   - Pods: the harness's active pods (GetActivePods and GetPods are the same
//     set: the harness forgets a pod on "remove"; GetPodByName searches it).
//   - Cpus, Memory, DynamicResources: nothing (no CPU/memory manager, no DRA).

import (
	"fmt"
	"os"
	"sort"

	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	podresourcesv1alpha1 "k8s.io/kubelet/pkg/apis/podresources/v1alpha1"
	apisgrpc "k8s.io/kubernetes/pkg/kubelet/apis/grpc"
	"k8s.io/kubernetes/pkg/kubelet/apis/podresources"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"

	criutil "k8s.io/cri-client/pkg/util"
)

// toContainerDevices converts the device manager's view to the API's shape.
// Sorted by resource, then device ID, then NUMA node (the kubelet's order is
// map order, i.e. random).
func toContainerDevices(devs devicemanager.ResourceDeviceInstances) []*podresourcesv1.ContainerDevices {
	out := []*podresourcesv1.ContainerDevices{}
	resources := make([]string, 0, len(devs))
	for r := range devs {
		resources = append(resources, r)
	}
	sort.Strings(resources)
	for _, r := range resources {
		ids := make([]string, 0, len(devs[r]))
		for id := range devs[r] {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			topo := devs[r][id].GetTopology()
			if topo == nil {
				out = append(out, &podresourcesv1.ContainerDevices{ResourceName: r, DeviceIds: []string{id}})
				continue
			}
			for _, n := range topo.GetNodes() {
				out = append(out, &podresourcesv1.ContainerDevices{
					ResourceName: r,
					DeviceIds:    []string{id},
					Topology:     &podresourcesv1.TopologyInfo{Nodes: []*podresourcesv1.NUMANode{{ID: n.GetID()}}},
				})
			}
		}
	}
	return out
}

// devicesProvider: the harness's current device manager.
type devicesProvider struct{ h *harness }

func (d devicesProvider) UpdateAllocatedDevices(logger klog.Logger) {
	d.h.manager().UpdateAllocatedDevices(logger)
}

func (d devicesProvider) GetDevices(podUID, containerName string) []*podresourcesv1.ContainerDevices {
	return toContainerDevices(d.h.manager().GetDevices(podUID, containerName))
}

func (d devicesProvider) GetAllocatableDevices(logger klog.Logger) []*podresourcesv1.ContainerDevices {
	return toContainerDevices(d.h.manager().GetAllocatableDevices(logger))
}

// podsProvider: the harness's active pods.
type podsProvider struct{ h *harness }

func (p podsProvider) GetActivePods() []*v1.Pod { return p.h.activePods() }
func (p podsProvider) GetPods() []*v1.Pod       { return p.h.activePods() }
func (p podsProvider) GetPodByName(namespace, name string) (*v1.Pod, bool) {
	for _, pod := range p.h.activePods() {
		if pod.Namespace == namespace && pod.Name == name {
			return pod, true
		}
	}
	return nil, false
}

// noCPUs, noMemory, noDynamicResources: no CPU manager, memory manager or DRA.
type noCPUs struct{}

func (noCPUs) GetCPUs(*v1.Pod, *v1.Container) []int64 { return []int64{} }
func (noCPUs) GetPodCPUs(string) []int64              { return []int64{} }
func (noCPUs) GetAllocatableCPUs() []int64            { return []int64{} }

type noMemory struct{}

func (noMemory) GetMemory(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesv1.ContainerMemory {
	return nil
}
func (noMemory) GetPodMemory(klog.Logger, string) []*podresourcesv1.ContainerMemory { return nil }
func (noMemory) GetAllocatableMemory(klog.Logger) []*podresourcesv1.ContainerMemory {
	return nil
}

type noDynamicResources struct{}

func (noDynamicResources) GetDynamicResources(klog.Logger, *v1.Pod, *v1.Container) []*podresourcesv1.DynamicResource {
	return nil
}

// servePodResources listens on path and serves the PodResources API in the
// background. The returned function stops the server and removes the socket.
func (h *harness) servePodResources(path string) (func(), error) {
	providers := podresources.PodResourcesProviders{
		Pods:             podsProvider{h},
		Devices:          devicesProvider{h},
		Cpus:             noCPUs{},
		Memory:           noMemory{},
		DynamicResources: noDynamicResources{},
	}
	server := grpc.NewServer(apisgrpc.WithRateLimiter(h.ctx, "podresources", podresources.DefaultQPS, podresources.DefaultBurstTokens))
	podresourcesv1alpha1.RegisterPodResourcesListerServer(server, podresources.NewV1alpha1PodResourcesServer(providers))
	podresourcesv1.RegisterPodResourcesListerServer(server, podresources.NewV1PodResourcesServer(h.ctx, providers))
	l, err := criutil.CreateListener("unix://" + path)
	if err != nil {
		return nil, fmt.Errorf("pod resources socket: %w", err)
	}
	h.logger.Info("Serving the podresources API", "endpoint", path)
	go func() {
		if err := server.Serve(l); err != nil && err != grpc.ErrServerStopped {
			h.logger.Error(err, "podresources server failed")
		}
	}()
	return func() {
		server.Stop()
		_ = os.Remove(path)
	}, nil
}
