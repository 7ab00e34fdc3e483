// Command e2enode runs the node and control-plane components of the end-to-end
// walkthrough (tests/e2e), built from the k8s.io/kubernetes module the rest of the
// test programs use:
//
//	e2enode kubelet ...              the kubelet (k8s.io/kubernetes/cmd/kubelet/app)
//	e2enode kube-scheduler ...       the scheduler (cmd/kube-scheduler/app)
//	e2enode kube-controller-manager  the controller manager (cmd/kube-controller-manager/app)
//	e2enode kube-proxy ...           the Service proxy (cmd/kube-proxy/app, nftables mode)
//
// One binary, so that the four share one link step: each component's own flags
// follow its name, exactly as for the upstream binaries.
package main

import (
	"context"
	"fmt"
	"os"
	_ "time/tzdata" // the controller manager's CronJob time zones

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
	"spookd.test/harness/internal/kubeversion"
)

func main() {
	components := map[string]func() *cobra.Command{
		"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
		"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
		"kube-controller-manager": func() *cobra.Command { return controllermanager.NewControllerManagerCommand() },
		"kube-proxy":              func() *cobra.Command { return proxy.NewProxyCommand() },
	}
	if len(os.Args) < 2 || components[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: e2enode kubelet|kube-scheduler|kube-controller-manager|kube-proxy [flags]")
		os.Exit(2)
	}
	if err := kubeversion.Stamp(); err != nil {
		fmt.Fprintf(os.Stderr, "e2enode: version: %v\n", err)
		os.Exit(1)
	}
	name := os.Args[1]
	command := components[name]()
	command.SetArgs(os.Args[2:])
	os.Exit(cli.Run(command))
}
