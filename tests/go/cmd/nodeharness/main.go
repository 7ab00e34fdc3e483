// Command nodeharness runs the kubelet's own device manager
// (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager) outside a kubelet, so that
// device plugins can be tested against the real registration, ListAndWatch,
// GetPreferredAllocation, Allocate and checkpoint code.
//
// The device manager's Registration socket is hard-wired to
// /var/lib/kubelet/device-plugins/kubelet.sock (NewManagerImpl takes no path),
// and on every start it deletes every socket in that directory. So this program
// must run in its own mount namespace with a private directory bind-mounted
// over /var/lib/kubelet/device-plugins:
//
//	unshare --mount --propagation private sh -c \
//	  'mkdir -p /var/lib/kubelet/device-plugins &&
//	   mount --bind "$0" /var/lib/kubelet/device-plugins && exec nodeharness' "$DIR"
//
// A plugin in the host namespace then uses $DIR as its plugin directory. As a
// safety net the program refuses to start unless that path is a mount point
// (override with -allow-unmounted).
//
// Control: one JSON request per line on stdin, one JSON reply per line on
// stdout; logs go to stderr. See the op* functions for the protocol.
//
// What the kubelet does and what this harness does instead:
//   - The kubelet builds a topology manager (policy "none" unless configured),
//     creates the device manager with it as its affinity Store, and registers
//     the device manager as a HintProvider. Pod admission runs the topology
//     manager's Admit, which (policy none) calls Allocate(pod, container) on
//     each hint provider for every init container and then every app container.
//     The harness does exactly that with the real topology manager.
//   - Inside Allocate the device manager first calls UpdateAllocatedDevices
//     (frees devices of pods that are no longer in activePods), then picks
//     devices; if the plugin set GetPreferredAllocationAvailable, the manager
//     calls the plugin's GetPreferredAllocation *inside* Allocate (only when
//     there is a choice to make: fewer needed than available), then calls the
//     plugin's Allocate RPC, stores the response and writes the checkpoint.
//   - When a container is started, the kubelet calls
//     GetDeviceRunContainerOptions (which issues PreStartContainer if the plugin
//     asked for it); the harness calls it right after a successful admission.
//   - The kubelet's activePods callback lists the pods of its pod manager that
//     are not terminated; the pod being admitted is already in it. The harness
//     keeps that set: a pod is added before admission, dropped on rejection
//     (the kubelet marks it Failed) and on "remove".
//   - Freed devices: the kubelet never tells the device manager that a pod
//     went away; the manager notices via activePods in UpdateAllocatedDevices,
//     which runs at the next Allocate and from the podresources API. "remove"
//     drops the pod from activePods and calls UpdateAllocatedDevices.
//   - GetCapacity is what the kubelet calls on every node-status update; it
//     also forgets resources whose endpoint stopped more than 5 minutes ago.
//   - sourcesReady: the real kubelet reports "not ready" for a while after
//     start; the harness always reports ready (steady state), so after a
//     restart the checkpointed allocations of still-active pods are kept and
//     those of unknown pods are freed at the next UpdateAllocatedDevices.
//   - The kubelet serves the PodResources API (List, GetAllocatableResources,
//     Get) on /var/lib/kubelet/pod-resources/kubelet.sock; with
//     -pod-resources-socket PATH the harness serves it, with the kubelet's own
//     server code, on PATH (see podresources.go). List, like the kubelet's,
//     runs UpdateAllocatedDevices first. Unlike a real kubelet restart, the
//     "restart" op keeps that socket (and its connections) up; calls are
//     answered by whichever device manager is current.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

// checkpointName is the device manager's checkpoint file in the plugin dir.
const checkpointName = "kubelet_internal_checkpoint"

// request is the union of all request shapes.
type request struct {
	Op             string             `json:"op"`
	Pod            string             `json:"pod"`
	Name           string             `json:"name"`
	Namespace      string             `json:"namespace"`
	Containers     []containerRequest `json:"containers"`
	InitContainers []containerRequest `json:"init_containers"`
}

type containerRequest struct {
	Name     string           `json:"name"`
	Requests map[string]int64 `json:"requests"`
	// RestartPolicy "Always" makes an init container a sidecar.
	RestartPolicy string `json:"restart_policy,omitempty"`
}

type reply map[string]any

// alwaysReady is the harness's config.SourcesReady.
type alwaysReady struct{}

func (alwaysReady) AddSource(string) {}
func (alwaysReady) AllReady() bool   { return true }

// recordingProvider wraps the device manager as the topology manager's hint
// provider and remembers the device manager's own Allocate error, because the
// admission result only carries a wrapped message.
type recordingProvider struct {
	*devicemanager.ManagerImpl
	lastErr error
}

func (r *recordingProvider) Allocate(ctx context.Context, pod *v1.Pod, c *v1.Container, op lifecycle.Operation) error {
	err := r.ManagerImpl.Allocate(ctx, pod, c, op)
	if err != nil {
		r.lastErr = err
	}
	return err
}

type harness struct {
	logger klog.Logger
	ctx    context.Context
	dir    string // as seen in this namespace

	podsMu sync.Mutex
	pods   map[string]*v1.Pod // the kubelet's active pods
	order  []string           // admission order, for stable output

	// dm is replaced by "restart" (on the main goroutine, under dmMu); other
	// goroutines (the podresources server) read it via manager().
	dmMu sync.RWMutex
	dm   *devicemanager.ManagerImpl
	tm   topologymanager.Manager
	prov *recordingProvider

	stopPodResources func() // nil without -pod-resources-socket
}

// manager is the current device manager, for goroutines other than the main one.
func (h *harness) manager() *devicemanager.ManagerImpl {
	h.dmMu.RLock()
	defer h.dmMu.RUnlock()
	return h.dm
}

// shutdown stops the device manager and the podresources server.
func (h *harness) shutdown() error {
	err := h.manager().Stop(h.logger)
	if h.stopPodResources != nil {
		h.stopPodResources()
	}
	return err
}

func (h *harness) activePods() []*v1.Pod {
	h.podsMu.Lock()
	defer h.podsMu.Unlock()
	out := make([]*v1.Pod, 0, len(h.pods))
	for _, uid := range h.order {
		if p, ok := h.pods[uid]; ok {
			out = append(out, p)
		}
	}
	return out
}

// startManager creates and starts a fresh device manager the way the kubelet's
// container manager does: topology manager (policy none), NewManagerImpl,
// AddHintProvider, Start (reads the checkpoint, deletes all sockets in the
// plugin dir but the checkpoint, listens on kubelet.sock).
func (h *harness) startManager() error {
	tm, err := topologymanager.NewManager(h.logger, nil, topologymanager.PolicyNone, topologymanager.ContainerTopologyScope, nil)
	if err != nil {
		return fmt.Errorf("topology manager: %w", err)
	}
	dm, err := devicemanager.NewManagerImpl(h.logger, nil, tm)
	if err != nil {
		return fmt.Errorf("device manager: %w", err)
	}
	prov := &recordingProvider{ManagerImpl: dm}
	tm.AddHintProvider(h.logger, prov)
	// The kubelet passes the containers the runtime reports; they only matter
	// while sources are not ready, which never happens here.
	if err := dm.Start(h.logger, h.activePods, alwaysReady{}, containermap.NewContainerMap(), sets.New[string]()); err != nil {
		return fmt.Errorf("device manager start: %w", err)
	}
	h.dmMu.Lock()
	h.dm, h.tm, h.prov = dm, tm, prov
	h.dmMu.Unlock()
	return nil
}

// ---- introspection of the manager's private state (read under its mutex) ----

func field(v reflect.Value, name string) reflect.Value {
	f := v.FieldByName(name)
	if !f.IsValid() {
		panic(fmt.Sprintf("no field %q in %s", name, v.Type()))
	}
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
}

type endpointView struct {
	socket  string
	stopped bool
	opts    *pluginapi.DevicePluginOptions
}

type managerView struct {
	healthy, unhealthy, allocated map[string][]string
	endpoints                     map[string]endpointView
}

func sortedSet(s sets.Set[string]) []string {
	out := sets.List(s)
	if out == nil {
		out = []string{}
	}
	return out
}

func (h *harness) inspect() (view managerView, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("introspecting devicemanager.ManagerImpl failed (field layout changed?): %v", r)
		}
	}()
	mv := reflect.ValueOf(h.dm).Elem()
	mu := field(mv, "mutex").Addr().Interface().(*sync.Mutex)
	mu.Lock()
	defer mu.Unlock()
	copySets := func(name string) map[string][]string {
		out := map[string][]string{}
		for r, s := range field(mv, name).Interface().(map[string]sets.Set[string]) {
			out[r] = sortedSet(s)
		}
		return out
	}
	view.healthy = copySets("healthyDevices")
	view.unhealthy = copySets("unhealthyDevices")
	view.allocated = copySets("allocatedDevices")
	view.endpoints = map[string]endpointView{}
	eps := field(mv, "endpoints")
	it := eps.MapRange()
	for it.Next() {
		info := reflect.New(it.Value().Type()).Elem()
		info.Set(it.Value())
		ev := endpointView{}
		if o := field(info, "opts"); !o.IsNil() {
			ev.opts = o.Interface().(*pluginapi.DevicePluginOptions)
		}
		e := field(info, "e")
		if !e.IsNil() {
			impl := e.Elem().Elem() // interface -> *endpointImpl -> endpointImpl
			emu := field(impl, "mutex").Addr().Interface().(*sync.Mutex)
			emu.Lock()
			ev.stopped = !field(impl, "stopTime").Interface().(time.Time).IsZero()
			emu.Unlock()
			ev.socket = field(impl, "socket").Interface().(string)
		}
		view.endpoints[it.Key().String()] = ev
	}
	return view, nil
}

// ---- ops ----

// opResources: {"op":"resources"} ->
//
//	{"ok":true,"resources":{"<name>":{"capacity":N,"allocatable":N,
//	  "devices":{"<id>":"Healthy"|"Unhealthy"},"allocated":["<id>"],
//	  "registered":bool,"endpoint":"<socket file name>",
//	  "options":{"pre_start_required":bool,"get_preferred_allocation_available":bool}|null}},
//	 "registered":["<name>"],"deleted":["<name>"]}
//
// capacity/allocatable come from GetCapacity (what the kubelet puts in the
// node status); device health is the manager's healthy/unhealthy sets (a
// disconnected plugin's devices all turn Unhealthy); registered means a live
// (not stopped) endpoint; deleted lists resources GetCapacity just dropped.
func (h *harness) opResources() reply {
	capacity, allocatable, deleted := h.dm.GetCapacity(h.logger)
	view, err := h.inspect()
	if err != nil {
		return reply{"ok": false, "error": err.Error()}
	}
	names := sets.New[string]()
	for r := range capacity {
		names.Insert(string(r))
	}
	for _, m := range []map[string][]string{view.healthy, view.unhealthy, view.allocated} {
		for r := range m {
			names.Insert(r)
		}
	}
	for r := range view.endpoints {
		names.Insert(r)
	}
	qty := func(l v1.ResourceList, r string) int64 {
		q, ok := l[v1.ResourceName(r)]
		if !ok {
			return 0
		}
		return q.Value()
	}
	res := map[string]any{}
	registered := []string{}
	for _, r := range sets.List(names) {
		devs := map[string]string{}
		for _, id := range view.healthy[r] {
			devs[id] = pluginapi.Healthy
		}
		for _, id := range view.unhealthy[r] {
			devs[id] = pluginapi.Unhealthy
		}
		alloc := view.allocated[r]
		if alloc == nil {
			alloc = []string{}
		}
		ep, hasEP := view.endpoints[r]
		var opts any
		if ep.opts != nil {
			opts = map[string]bool{
				"pre_start_required":                 ep.opts.PreStartRequired,
				"get_preferred_allocation_available": ep.opts.GetPreferredAllocationAvailable,
			}
		}
		isReg := hasEP && !ep.stopped
		if isReg {
			registered = append(registered, r)
		}
		res[r] = map[string]any{
			"capacity":    qty(capacity, r),
			"allocatable": qty(allocatable, r),
			"devices":     devs,
			"allocated":   alloc,
			"registered":  isReg,
			"endpoint":    filepath.Base(ep.socket),
			"options":     opts,
		}
		if ep.socket == "" {
			res[r].(map[string]any)["endpoint"] = ""
		}
	}
	if deleted == nil {
		deleted = []string{}
	}
	sort.Strings(deleted)
	return reply{"ok": true, "resources": res, "registered": registered, "deleted": deleted}
}

func buildContainers(reqs []containerRequest, init bool) ([]v1.Container, error) {
	out := make([]v1.Container, 0, len(reqs))
	for _, c := range reqs {
		if c.Name == "" {
			return nil, errors.New("container without a name")
		}
		rl := v1.ResourceList{}
		for r, n := range c.Requests {
			rl[v1.ResourceName(r)] = *resource.NewQuantity(n, resource.DecimalSI)
		}
		// Extended resources cannot be overcommitted: requests == limits, and
		// the device manager reads Limits.
		ctr := v1.Container{Name: c.Name, Resources: v1.ResourceRequirements{Requests: rl, Limits: rl.DeepCopy()}}
		if c.RestartPolicy != "" {
			if !init {
				return nil, fmt.Errorf("restart_policy is only for init containers (%s)", c.Name)
			}
			p := v1.ContainerRestartPolicy(c.RestartPolicy)
			ctr.RestartPolicy = &p
		}
		out = append(out, ctr)
	}
	return out, nil
}

func (h *harness) containerDevices(uid, name string) map[string][]string {
	out := map[string][]string{}
	for r, devs := range h.dm.GetDevices(uid, name) {
		ids := make([]string, 0, len(devs))
		for id := range devs {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		out[r] = ids
	}
	return out
}

// opAdmit: {"op":"admit","pod":"<uid>","name":"<name>","namespace":"default",
//
//	 "init_containers":[...], "containers":[{"name":"c0","requests":{"example.com/widget":1}}]} ->
//	{"ok":true,"pod":"<uid>","containers":[{"name":"c0","init":false,
//	  "devices":{"<resource>":["<id>"]},"envs":{"K":"V"},
//	  "mounts":[{"container_path":..,"host_path":..,"read_only":bool}],
//	  "device_nodes":[{"container_path":..,"host_path":..,"permissions":..}],
//	  "annotations":{"K":"V"},"cdi_devices":["vendor/class=name"]}]}
//
// or {"ok":false,"error":"<device manager error>","reason":"UnexpectedAdmissionError",
// "message":"<kubelet admission message>","stage":"admit"|"run_container_options"}.
func (h *harness) opAdmit(req request) reply {
	if req.Pod == "" {
		return reply{"ok": false, "error": "admit: missing pod uid"}
	}
	initCs, err := buildContainers(req.InitContainers, true)
	if err != nil {
		return reply{"ok": false, "error": err.Error()}
	}
	cs, err := buildContainers(req.Containers, false)
	if err != nil {
		return reply{"ok": false, "error": err.Error()}
	}
	name, ns := req.Name, req.Namespace
	if name == "" {
		name = "pod-" + req.Pod
	}
	if ns == "" {
		ns = "default"
	}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{UID: types.UID(req.Pod), Name: name, Namespace: ns},
		Spec:       v1.PodSpec{InitContainers: initCs, Containers: cs},
	}

	// Like the kubelet: the pod is in the pod manager (hence active) while it
	// is being admitted.
	h.podsMu.Lock()
	_, wasActive := h.pods[req.Pod]
	others := make([]*v1.Pod, 0, len(h.pods))
	for uid, p := range h.pods {
		if uid != req.Pod {
			others = append(others, p)
		}
	}
	h.pods[req.Pod] = pod
	if !wasActive {
		h.order = append(h.order, req.Pod)
	}
	h.podsMu.Unlock()

	h.prov.lastErr = nil
	result := h.tm.Admit(h.ctx, &lifecycle.PodAdmitAttributes{Pod: pod, OtherPods: others, Operation: lifecycle.AddOperation})
	if !result.Admit {
		if !wasActive {
			h.dropPod(req.Pod) // rejected pods become Failed, hence inactive
		}
		msg := result.Message
		if h.prov.lastErr != nil {
			msg = h.prov.lastErr.Error()
		}
		return reply{"ok": false, "stage": "admit", "error": msg, "reason": result.Reason, "message": result.Message}
	}

	out := []any{}
	all := append(append([]v1.Container{}, initCs...), cs...)
	for i := range all {
		c := &all[i]
		opts, err := h.dm.GetDeviceRunContainerOptions(h.ctx, pod, c)
		if err != nil {
			return reply{"ok": false, "stage": "run_container_options", "container": c.Name, "error": err.Error()}
		}
		envs := map[string]string{}
		mounts := []any{}
		nodes := []any{}
		annotations := map[string]string{}
		cdi := []string{}
		if opts != nil {
			for _, e := range opts.Envs {
				envs[e.Name] = e.Value
			}
			for _, m := range opts.Mounts {
				mounts = append(mounts, map[string]any{"container_path": m.ContainerPath, "host_path": m.HostPath, "read_only": m.ReadOnly})
			}
			for _, d := range opts.Devices {
				nodes = append(nodes, map[string]any{"container_path": d.PathInContainer, "host_path": d.PathOnHost, "permissions": d.Permissions})
			}
			for _, a := range opts.Annotations {
				annotations[a.Name] = a.Value
			}
			for _, d := range opts.CDIDevices {
				cdi = append(cdi, d.Name)
			}
		}
		out = append(out, map[string]any{
			"name": c.Name, "init": i < len(initCs),
			"devices": h.containerDevices(req.Pod, c.Name),
			"envs":    envs, "mounts": mounts, "device_nodes": nodes,
			"annotations": annotations, "cdi_devices": cdi,
		})
	}
	return reply{"ok": true, "pod": req.Pod, "containers": out}
}

func (h *harness) dropPod(uid string) bool {
	h.podsMu.Lock()
	defer h.podsMu.Unlock()
	if _, ok := h.pods[uid]; !ok {
		return false
	}
	delete(h.pods, uid)
	for i, u := range h.order {
		if u == uid {
			h.order = append(h.order[:i], h.order[i+1:]...)
			break
		}
	}
	return true
}

// opRemove: {"op":"remove","pod":"<uid>"} ->
// {"ok":true,"was_active":bool,"freed":{"<resource>":["<id>"]}}
func (h *harness) opRemove(req request) reply {
	before, err := h.inspect()
	if err != nil {
		return reply{"ok": false, "error": err.Error()}
	}
	was := h.dropPod(req.Pod)
	h.dm.UpdateAllocatedDevices(h.logger)
	after, err := h.inspect()
	if err != nil {
		return reply{"ok": false, "error": err.Error()}
	}
	freed := map[string][]string{}
	for r, ids := range before.allocated {
		left := sets.New(after.allocated[r]...)
		for _, id := range ids {
			if !left.Has(id) {
				freed[r] = append(freed[r], id)
			}
		}
	}
	return reply{"ok": true, "was_active": was, "freed": freed}
}

// opPods: {"op":"pods"} -> {"ok":true,"pods":{"<uid>":{"name":..,"containers":{"<c>":{"<resource>":["<id>"]}}}}}
// (the manager's per-container device assignment, GetDevices, for active pods)
func (h *harness) opPods() reply {
	pods := map[string]any{}
	for _, p := range h.activePods() {
		cs := map[string]any{}
		for _, c := range append(append([]v1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
			cs[c.Name] = h.containerDevices(string(p.UID), c.Name)
		}
		pods[string(p.UID)] = map[string]any{"name": p.Name, "containers": cs}
	}
	return reply{"ok": true, "pods": pods}
}

// opCheckpoint: {"op":"checkpoint"} -> {"ok":true,"checkpoint":<the JSON file>|null}
func (h *harness) opCheckpoint() reply {
	data, err := os.ReadFile(filepath.Join(h.dir, checkpointName))
	if errors.Is(err, os.ErrNotExist) {
		return reply{"ok": true, "checkpoint": nil}
	}
	if err != nil {
		return reply{"ok": false, "error": err.Error()}
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return reply{"ok": false, "error": err.Error()}
	}
	return reply{"ok": true, "checkpoint": v}
}

func (h *harness) sockets() []string {
	out := []string{}
	ents, _ := os.ReadDir(h.dir)
	for _, e := range ents {
		if e.Type()&os.ModeSocket != 0 {
			out = append(out, e.Name())
		}
	}
	return out
}

// opRestart: {"op":"restart"} -> {"ok":true,"removed_sockets":["<file>"],"pods":{...as opPods}}
// Stops the manager (closes plugin connections and kubelet.sock), then starts a
// brand new one the way a restarted kubelet does: it reads the checkpoint and
// its Start deletes every socket in the directory (CleanupPluginDirectory)
// before listening on a new kubelet.sock. Active pods are kept. Replies once
// the new Registration server listens.
func (h *harness) opRestart() reply {
	if err := h.dm.Stop(h.logger); err != nil {
		return reply{"ok": false, "error": "stop: " + err.Error()}
	}
	before := h.sockets()
	if err := h.startManager(); err != nil {
		return reply{"ok": false, "error": err.Error()}
	}
	now := sets.New(h.sockets()...)
	removed := []string{}
	for _, s := range before {
		if !now.Has(s) {
			removed = append(removed, s)
		}
	}
	r := h.opPods()
	r["removed_sockets"] = removed
	return r
}

func isMountPoint(path string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

func main() {
	klog.InitFlags(nil)
	allowUnmounted := flag.Bool("allow-unmounted", false, "start even if "+pluginapi.DevicePluginPath+" is not a mount point (DANGER: deletes every socket in it)")
	gates := flag.String("feature-gates", "", "kubelet feature gates, e.g. ResourceHealthStatus=true")
	podResourcesSocket := flag.String("pod-resources-socket", "", "serve the kubelet's PodResources API (v1, v1alpha1) on this Unix socket (a path outside the plugin dir, which the device manager empties on start)")
	flag.Parse()

	logger := klog.Background()
	if *gates != "" {
		if err := utilfeature.DefaultMutableFeatureGate.Set(*gates); err != nil {
			fmt.Fprintln(os.Stderr, "feature gates:", err)
			os.Exit(2)
		}
	}
	dir := filepath.Clean(pluginapi.DevicePluginPath)
	if !*allowUnmounted && !isMountPoint(dir) {
		fmt.Fprintf(os.Stderr, "nodeharness: %s is not a mount point; run me in a private mount namespace with a directory bind-mounted there (or pass -allow-unmounted)\n", dir)
		os.Exit(2)
	}

	h := &harness{logger: logger, ctx: klog.NewContext(context.Background(), logger), dir: dir, pods: map[string]*v1.Pod{}}
	if err := h.startManager(); err != nil {
		fmt.Fprintln(os.Stderr, "nodeharness:", err)
		os.Exit(1)
	}
	if *podResourcesSocket != "" {
		stop, err := h.servePodResources(*podResourcesSocket)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nodeharness:", err)
			_ = h.dm.Stop(logger)
			os.Exit(1)
		}
		h.stopPodResources = stop
	}

	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	emit := func(v any) {
		b, err := json.Marshal(v)
		if err != nil {
			b, _ = json.Marshal(reply{"ok": false, "error": "marshal: " + err.Error()})
		}
		outMu.Lock()
		out.Write(b)
		out.WriteByte('\n')
		out.Flush()
		outMu.Unlock()
	}
	emit(reply{"ready": true, "socket": filepath.Join(dir, "kubelet.sock"), "pod_resources_socket": *podResourcesSocket, "pid": os.Getpid()})

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		logger.Info("Signal received, stopping", "signal", s)
		_ = h.shutdown()
		os.Exit(0)
	}()

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		var req request
		if err := json.Unmarshal([]byte(line), &req); err != nil {
			emit(reply{"ok": false, "error": "bad request: " + err.Error()})
			continue
		}
		var r reply
		switch req.Op {
		case "resources":
			r = h.opResources()
		case "admit":
			r = h.opAdmit(req)
		case "remove":
			r = h.opRemove(req)
		case "pods":
			r = h.opPods()
		case "checkpoint":
			r = h.opCheckpoint()
		case "restart":
			r = h.opRestart()
		case "stop":
			err := h.shutdown()
			if err != nil {
				emit(reply{"ok": false, "op": "stop", "error": err.Error()})
				os.Exit(1)
			}
			emit(reply{"ok": true, "op": "stop"})
			os.Exit(0)
		default:
			r = reply{"ok": false, "error": fmt.Sprintf("unknown op %q", req.Op)}
		}
		r["op"] = req.Op
		emit(r)
	}
	// stdin closed: the controller went away.
	_ = h.shutdown()
}
