// Command allocbench measures Allocate latency over a device plugin's Unix
// socket the way the kubelet calls it: the kubelet's own plugin client
// (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1, whose dial is
// grpc-go with the kubelet's options) and the v1beta1 DevicePluginClient from
// k8s.io/kubelet, one container request per call, as endpointImpl.allocate sends.
//
// Several plugins are measured by one client process, alternately: for each
// round, for each request size, every target gets -calls Allocate calls in turn
// (the order of targets rotates each round), so drift of the machine hits every
// target alike.
//
//	allocbench -target spookd=/tmp/d/spookd-examplecom_widget.sock \
//	           -target go=/tmp/d/goplugin.sock -id-prefix dev- \
//	           -sizes 1,8,64 -calls 2000 -warmup 200 -rounds 5
//
// A request of size k asks for <id-prefix>0 .. <id-prefix>k-1. Output: one JSON
// line per (round, target, size) with latency percentiles in microseconds, and a
// final {"done":true} line. With -raw the per-call latencies are included.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	plugin "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
)

type targetFlag []string

func (t *targetFlag) String() string     { return strings.Join(*t, ",") }
func (t *targetFlag) Set(v string) error { *t = append(*t, v); return nil }

// connected is the ClientHandler the kubelet's plugin client reports to; it
// keeps the connected plugin (its API() is the DevicePluginClient).
type connected struct{ plugin plugin.DevicePlugin }

func (c *connected) PluginConnected(_ context.Context, _ string, p plugin.DevicePlugin) error {
	c.plugin = p
	return nil
}
func (c *connected) PluginDisconnected(klog.Logger, string, string) {}
func (c *connected) PluginListAndWatchReceiver(klog.Logger, string, *pluginapi.ListAndWatchResponse) {
}

type target struct {
	name   string
	socket string
	client plugin.Client
	api    pluginapi.DevicePluginClient
}

type result struct {
	Round  int       `json:"round"`
	Target string    `json:"target"`
	Size   int       `json:"size"`
	Calls  int       `json:"calls"`
	P50    float64   `json:"p50_us"`
	P90    float64   `json:"p90_us"`
	P99    float64   `json:"p99_us"`
	Max    float64   `json:"max_us"`
	Mean   float64   `json:"mean_us"`
	Raw    []float64 `json:"raw_us,omitempty"`
	Errors int       `json:"errors"`
	Error  string    `json:"error,omitempty"`
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	// nearest rank
	k := int(p/100*float64(len(sorted))+0.999999) - 1
	if k < 0 {
		k = 0
	}
	if k >= len(sorted) {
		k = len(sorted) - 1
	}
	return sorted[k]
}

func main() {
	var targets targetFlag
	flag.Var(&targets, "target", "NAME=SOCKET_PATH of a plugin to measure (repeatable)")
	resource := flag.String("resource", "example.com/widget", "resource name (for the kubelet client's logs only)")
	prefix := flag.String("id-prefix", "dev-", "device IDs are <prefix><index>")
	sizesFlag := flag.String("sizes", "1,8,64", "devices per request, comma-separated")
	calls := flag.Int("calls", 2000, "measured Allocate calls per (round, target, size)")
	warmup := flag.Int("warmup", 200, "unmeasured calls per target and size before the first round")
	rounds := flag.Int("rounds", 5, "rounds")
	timeout := flag.Duration("timeout", 10*time.Second, "per-call deadline")
	raw := flag.Bool("raw", false, "include every latency in the output")
	flag.Parse()
	if len(targets) == 0 {
		fmt.Fprintln(os.Stderr, "allocbench: give at least one -target NAME=SOCKET")
		os.Exit(2)
	}
	var sizes []int
	for _, s := range strings.Split(*sizesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "allocbench: bad size %q\n", s)
			os.Exit(2)
		}
		sizes = append(sizes, n)
	}
	ctx := klog.NewContext(context.Background(), klog.Background())

	var ts []*target
	for _, t := range targets {
		name, socket, ok := strings.Cut(t, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "allocbench: -target %q is not NAME=SOCKET\n", t)
			os.Exit(2)
		}
		h := &connected{}
		c := plugin.NewPluginClient(*resource, socket, h)
		if err := c.Connect(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "allocbench: connect %s (%s): %v\n", name, socket, err)
			os.Exit(1)
		}
		ts = append(ts, &target{name: name, socket: socket, client: c, api: h.plugin.API()})
	}
	defer func() {
		for _, t := range ts {
			_ = t.client.Disconnect(klog.Background())
		}
	}()

	requests := map[int]*pluginapi.AllocateRequest{}
	for _, n := range sizes {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("%s%d", *prefix, i)
		}
		requests[n] = &pluginapi.AllocateRequest{
			ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}},
		}
	}

	call := func(t *target, n int) (time.Duration, error) {
		cctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		start := time.Now()
		resp, err := t.api.Allocate(cctx, requests[n])
		d := time.Since(start)
		if err == nil && len(resp.ContainerResponses) != 1 {
			err = fmt.Errorf("%d container responses, want 1", len(resp.ContainerResponses))
		}
		return d, err
	}

	for _, t := range ts {
		for _, n := range sizes {
			for i := 0; i < *warmup; i++ {
				if _, err := call(t, n); err != nil {
					fmt.Fprintf(os.Stderr, "allocbench: warm-up Allocate on %s with %d devices: %v\n", t.name, n, err)
					os.Exit(1)
				}
			}
		}
	}

	enc := json.NewEncoder(os.Stdout)
	lat := make([]float64, 0, *calls)
	for r := 0; r < *rounds; r++ {
		for _, n := range sizes {
			for k := range ts {
				t := ts[(k+r)%len(ts)]
				lat = lat[:0]
				res := result{Round: r, Target: t.name, Size: n}
				sum := 0.0
				for i := 0; i < *calls; i++ {
					d, err := call(t, n)
					if err != nil {
						res.Errors++
						res.Error = err.Error()
						continue
					}
					us := float64(d.Nanoseconds()) / 1000
					lat = append(lat, us)
					sum += us
				}
				if *raw {
					res.Raw = append([]float64(nil), lat...)
				}
				sort.Float64s(lat)
				res.Calls = len(lat)
				if len(lat) > 0 {
					res.P50 = percentile(lat, 50)
					res.P90 = percentile(lat, 90)
					res.P99 = percentile(lat, 99)
					res.Max = lat[len(lat)-1]
					res.Mean = sum / float64(len(lat))
				}
				_ = enc.Encode(res)
			}
		}
	}
	_ = enc.Encode(map[string]bool{"done": true})
}
