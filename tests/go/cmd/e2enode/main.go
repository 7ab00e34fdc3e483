// Command e2enode runs the node and control-plane components of the end-to-end
// walkthrough (tests/e2e), built from the k8s.io/kubernetes module the rest of the
// test programs use:
//
//	e2enode kubelet ...              the kubelet (k8s.io/kubernetes/cmd/kubelet/app)
//	e2enode kube-scheduler ...       the scheduler (cmd/kube-scheduler/app)
//	e2enode kube-controller-manager  the controller manager (cmd/kube-controller-manager/app)
//
// One binary, so that the three share one link step: each component's own flags
// follow its name, exactly as for the upstream binaries.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	_ "time/tzdata" // the controller manager's CronJob time zones
	_ "unsafe"      // for go:linkname

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/component-base/version"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// The version a Kubernetes release build stamps in with -ldflags; without it the
// kubelet reports v0.0.0-master as its Node's kubeletVersion. Set from the
// k8s.io/kubernetes module this was built with, as tests/go/cmd/apiserver does.
//
//go:linkname gitVersion k8s.io/component-base/version.gitVersion
var gitVersion string

//go:linkname gitMajor k8s.io/component-base/version.gitMajor
var gitMajor string

//go:linkname gitMinor k8s.io/component-base/version.gitMinor
var gitMinor string

func stampKubernetesVersion() error {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return errors.New("no build information in the binary")
	}
	for _, dep := range info.Deps {
		if dep.Path != "k8s.io/kubernetes" {
			continue
		}
		parts := strings.SplitN(strings.TrimPrefix(dep.Version, "v"), ".", 3)
		if len(parts) < 2 {
			return fmt.Errorf("unexpected k8s.io/kubernetes version %q", dep.Version)
		}
		gitVersion, gitMajor, gitMinor = dep.Version, parts[0], parts[1]
		return version.SetDynamicVersion(dep.Version)
	}
	return errors.New("k8s.io/kubernetes is not among the build's modules")
}

func main() {
	components := map[string]func() *cobra.Command{
		"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
		"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
		"kube-controller-manager": func() *cobra.Command { return controllermanager.NewControllerManagerCommand() },
	}
	if len(os.Args) < 2 || components[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: e2enode kubelet|kube-scheduler|kube-controller-manager [flags]")
		os.Exit(2)
	}
	if err := stampKubernetesVersion(); err != nil {
		fmt.Fprintf(os.Stderr, "e2enode: version: %v\n", err)
		os.Exit(1)
	}
	name := os.Args[1]
	command := components[name]()
	command.SetArgs(os.Args[2:])
	os.Exit(cli.Run(command))
}
