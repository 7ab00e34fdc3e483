// Command draharness runs the kubelet's own DRA code outside a kubelet: the plugin
// manager (k8s.io/kubernetes/pkg/kubelet/pluginmanager: the plugin watcher on
// <kubelet-dir>/plugins_registry and its registration reconciler) with the DRA
// manager (pkg/kubelet/cm/dra) as its DRAPlugin handler, against a real API server.
// So a DRA driver is tested against the real registration (GetInfo,
// NotifyRegistrationStatus, service version negotiation), the real gRPC client of
// NodePrepareResources / NodeUnprepareResources, the kubelet's claim checks (the
// claim is allocated and reserved for the pod) and its own checkpoint.
//
// What the kubelet does and what this harness does instead:
//   - The kubelet creates the DRA manager with its state directory
//     (/var/lib/kubelet) and starts it with its pod manager's active pods, a
//     node getter and the config sources; the harness gives it -state-dir, the
//     pods the API server has bound to -node that have not ended (what a kubelet's
//     pod manager holds from its API source), the Node read from the API and
//     sources that are always ready. So the manager's reconcile loop unprepares the
//     claims of pods that are deleted, as a kubelet's does.
//   - The kubelet's plugin manager watches <root-dir>/plugins_registry; the harness
//     watches <-kubelet-dir>/plugins_registry with the same code.
//   - Before starting a pod's containers the kubelet calls PrepareResources(pod),
//     then GetResources(pod, container) for each container, and hands the CDI
//     device IDs to the runtime. The "prepare" op does exactly that for a pod
//     read from the API server, and answers with the CDI IDs per container.
//   - When a pod is gone the kubelet calls UnprepareResources(pod): the
//     "unprepare" op.
//   - "restart" stops the DRA manager and plugin manager and starts new ones on
//     the same state directory, as a kubelet restart does.
//
// Control: one JSON request per line on stdin, one JSON reply per line on stdout;
// logs go to stderr. Requests: {"op":"registered"} answers whether a plugin of
// -driver is registered now; {"op":"prepare","namespace":N,"pod":P};
// {"op":"unprepare","namespace":N,"pod":P}; {"op":"restart"}.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	draplugin "k8s.io/kubernetes/pkg/kubelet/cm/dra/plugin"
	"k8s.io/kubernetes/pkg/kubelet/config"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager"
)

type request struct {
	Op        string `json:"op"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
}

type reply struct {
	Op         string              `json:"op"`
	Error      string              `json:"error,omitempty"`
	Registered bool                `json:"registered,omitempty"`
	Containers map[string][]string `json:"containers,omitempty"`
}

type node struct {
	client     kubernetes.Interface
	nodeName   string
	kubeletDir string
	stateDir   string
	driver     string

	cancel  context.CancelFunc
	stop    chan struct{}
	manager *dra.Manager
}

func (n *node) start(ctx context.Context) error {
	manager, err := dra.NewManager(klog.FromContext(ctx), n.client, n.stateDir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	getNode := func(ctx context.Context) (*v1.Node, error) {
		return n.client.CoreV1().Nodes().Get(ctx, n.nodeName, metav1.GetOptions{})
	}
	// The kubelet's pod manager holds the pods bound to the node (from the API
	// source); the DRA manager's reconcile loop unprepares claims of any other pod.
	active := func() []*v1.Pod {
		list, err := n.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.nodeName})
		if err != nil {
			klog.FromContext(ctx).Error(err, "listing the node's pods")
			return nil
		}
		pods := make([]*v1.Pod, 0, len(list.Items))
		for i := range list.Items {
			if phase := list.Items[i].Status.Phase; phase != v1.PodSucceeded && phase != v1.PodFailed {
				pods = append(pods, &list.Items[i])
			}
		}
		return pods
	}
	ready := config.NewSourcesReady(func(_ sets.Set[string]) bool { return true })
	if err := manager.Start(ctx, active, getNode, ready); err != nil {
		cancel()
		return err
	}
	registry := filepath.Join(n.kubeletDir, "plugins_registry")
	if err := os.MkdirAll(registry, 0o750); err != nil {
		cancel()
		return err
	}
	plugins := pluginmanager.NewPluginManager(registry, record.NewFakeRecorder(100))
	plugins.AddHandler("DRAPlugin", manager.GetWatcherHandler())
	n.stop = make(chan struct{})
	go plugins.Run(ctx, ready, n.stop)
	n.cancel = cancel
	n.manager = manager
	return nil
}

func (n *node) shutdown() {
	close(n.stop)
	n.manager.Stop()
	n.cancel()
}

func (n *node) pod(ctx context.Context, req request) (*v1.Pod, error) {
	return n.client.CoreV1().Pods(req.Namespace).Get(ctx, req.Pod, metav1.GetOptions{})
}

func (n *node) handle(ctx context.Context, req request) reply {
	answer := reply{Op: req.Op}
	fail := func(err error) reply {
		answer.Error = err.Error()
		return answer
	}
	switch req.Op {
	case "registered":
		handler, ok := n.manager.GetWatcherHandler().(*draplugin.DRAPluginManager)
		if !ok {
			return fail(fmt.Errorf("the DRA manager's handler is a %T", n.manager.GetWatcherHandler()))
		}
		_, err := handler.GetPlugin(n.driver)
		answer.Registered = err == nil
	case "prepare":
		pod, err := n.pod(ctx, req)
		if err != nil {
			return fail(err)
		}
		if err := n.manager.PrepareResources(ctx, pod); err != nil {
			return fail(err)
		}
		answer.Containers = map[string][]string{}
		for i := range pod.Spec.Containers {
			container := &pod.Spec.Containers[i]
			info, err := n.manager.GetResources(pod, container)
			if err != nil {
				return fail(err)
			}
			ids := []string{}
			for _, device := range info.CDIDevices {
				ids = append(ids, device.Name)
			}
			sort.Strings(ids)
			answer.Containers[container.Name] = ids
		}
	case "unprepare":
		pod, err := n.pod(ctx, req)
		if err != nil {
			return fail(err)
		}
		if err := n.manager.UnprepareResources(ctx, pod); err != nil {
			return fail(err)
		}
	case "restart":
		n.shutdown()
		if err := n.start(ctx); err != nil {
			return fail(err)
		}
	default:
		return fail(fmt.Errorf("unknown op %q", req.Op))
	}
	return answer
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "admin kubeconfig of the API server")
	nodeName := flag.String("node", "node-1", "this node's name (the Node must exist)")
	kubeletDir := flag.String("kubelet-dir", "", "directory holding plugins_registry/ (the kubelet's root dir)")
	stateDir := flag.String("state-dir", "", "where the DRA manager keeps its checkpoint")
	driver := flag.String("driver", "spookd.skao.int", "the DRA driver name that \"registered\" asks about")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" || *kubeletDir == "" || *stateDir == "" {
		fmt.Fprintln(os.Stderr, "draharness: -kubeconfig, -kubelet-dir and -state-dir are required")
		os.Exit(2)
	}
	restConfig, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "draharness:", err)
		os.Exit(1)
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "draharness:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	n := &node{client: client, nodeName: *nodeName, kubeletDir: *kubeletDir, stateDir: *stateDir, driver: *driver}
	if err := n.start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "draharness:", err)
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	_ = out.Encode(reply{Op: "ready"})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			_ = out.Encode(reply{Op: "?", Error: err.Error()})
			continue
		}
		_ = out.Encode(n.handle(ctx, req))
	}
	n.shutdown()
}
