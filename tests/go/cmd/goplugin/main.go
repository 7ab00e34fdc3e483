// Command goplugin is the Go reference device plugin: the kubelet's own stub
// device plugin (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1,
// NewDevicePluginStub) serving N healthy devices of one resource.
//
// It listens on <plugin-dir>/<socket>, registers with <plugin-dir>/kubelet.sock
// and runs until SIGTERM/SIGINT. On success it prints one line to stdout:
//
//	{"ready":true,"resource":"example.com/widget","socket":"/dir/goplugin.sock","devices":["dev-0",...]}
//
// Kubelet restarts: with -watch (default, like the kubelet's sample device
// plugin) the stub's own Watch loop notices a newly created kubelet.sock and,
// after its fixed 10 s poll interval, restarts its server and re-registers.
//
// Allocate answers one ContainerAllocateResponse per container request with
// env GOPLUGIN_DEVICES=<comma-separated IDs> and GOPLUGIN_RESOURCE=<resource>
// (the stub's default Allocate returns no container responses, which the
// kubelet rejects).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	plugin "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
)

func main() {
	klog.InitFlags(nil)
	resourceName := flag.String("resource", "example.com/widget", "extended resource name")
	n := flag.Int("n", 2, "number of (healthy) devices")
	prefix := flag.String("id-prefix", "dev-", "device IDs are <prefix><index>")
	dir := flag.String("plugin-dir", pluginapi.DevicePluginPath, "device plugin directory (holds kubelet.sock)")
	socket := flag.String("socket", "goplugin.sock", "socket file name in -plugin-dir")
	preferred := flag.Bool("preferred", false, "advertise GetPreferredAllocation (answers must_include + lowest-sorted available)")
	watch := flag.Bool("watch", true, "re-register after a kubelet restart (the stub's Watch loop)")
	regTimeout := flag.Duration("register-timeout", 30*time.Second, "keep retrying the first registration this long")
	flag.Parse()

	logger := klog.Background()
	ctx := klog.NewContext(context.Background(), logger)
	pluginDir := filepath.Clean(*dir)
	sockPath := filepath.Join(pluginDir, *socket)
	kubeletSock := filepath.Join(pluginDir, filepath.Base(pluginapi.KubeletSocket))

	devs := make([]*pluginapi.Device, 0, *n)
	ids := make([]string, 0, *n)
	for i := 0; i < *n; i++ {
		id := fmt.Sprintf("%s%d", *prefix, i)
		ids = append(ids, id)
		devs = append(devs, &pluginapi.Device{ID: id, Health: pluginapi.Healthy})
	}

	stub := plugin.NewDevicePluginStub(logger, devs, sockPath, *resourceName, false, *preferred)
	stub.SetAllocFunc(func(r *pluginapi.AllocateRequest, known map[string]*pluginapi.Device) (*pluginapi.AllocateResponse, error) {
		resp := &pluginapi.AllocateResponse{}
		for _, cr := range r.ContainerRequests {
			for _, id := range cr.DevicesIds {
				d, ok := known[id]
				if !ok {
					return nil, fmt.Errorf("invalid allocation request with non-existing device %s", id)
				}
				if d.Health != pluginapi.Healthy {
					return nil, fmt.Errorf("invalid allocation request with unhealthy device %s", id)
				}
			}
			sorted := append([]string(nil), cr.DevicesIds...)
			sort.Strings(sorted)
			resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
				Envs: map[string]string{
					"GOPLUGIN_DEVICES":  strings.Join(sorted, ","),
					"GOPLUGIN_RESOURCE": *resourceName,
				},
			})
		}
		return resp, nil
	})
	if *preferred {
		stub.SetGetPreferredAllocFunc(func(r *pluginapi.PreferredAllocationRequest, _ map[string]*pluginapi.Device) (*pluginapi.PreferredAllocationResponse, error) {
			resp := &pluginapi.PreferredAllocationResponse{}
			for _, cr := range r.ContainerRequests {
				chosen := append([]string(nil), cr.MustIncludeDeviceIDs...)
				have := map[string]bool{}
				for _, id := range chosen {
					have[id] = true
				}
				avail := append([]string(nil), cr.AvailableDeviceIDs...)
				sort.Strings(avail)
				for _, id := range avail {
					if len(chosen) >= int(cr.AllocationSize) {
						break
					}
					if !have[id] {
						chosen = append(chosen, id)
						have[id] = true
					}
				}
				resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: chosen})
			}
			return resp, nil
		})
	}

	if err := stub.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "goplugin: start:", err)
		os.Exit(1)
	}
	// Register; the stub stops its server when Register fails, so restart it
	// before each retry.
	deadline := time.Now().Add(*regTimeout)
	for {
		err := stub.Register(ctx, kubeletSock, *resourceName, pluginDir+"/")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "goplugin: register:", err)
			_ = stub.Stop(logger)
			os.Exit(1)
		}
		time.Sleep(500 * time.Millisecond)
		if err := stub.Restart(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "goplugin: restart:", err)
			os.Exit(1)
		}
	}
	if *watch {
		go stub.Watch(ctx, kubeletSock, *resourceName, pluginDir+"/")
	}

	b, _ := json.Marshal(map[string]any{"ready": true, "resource": *resourceName, "socket": sockPath, "devices": ids})
	fmt.Println(string(b))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	logger.Info("Shutting down", "signal", s.String())
	if err := stub.Stop(logger); err != nil {
		fmt.Fprintln(os.Stderr, "goplugin: stop:", err)
		os.Exit(1)
	}
}
