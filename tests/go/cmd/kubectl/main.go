// Command kubectl is the kubectl of the cluster's minor version, built from the
// k8s.io/kubernetes module the other test programs use (cmd/kubectl of v1.37.2, with
// the version stamped as a release build does), for the end-to-end walkthrough: the
// tests type exactly what a user types, against the e2e API server.
package main

import (
	"fmt"
	"os"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // client auth plugins, as upstream
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
	"spookd.test/harness/internal/kubeversion"
)

func main() {
	if err := kubeversion.Stamp(); err != nil {
		fmt.Fprintf(os.Stderr, "kubectl: version: %v\n", err)
		os.Exit(1)
	}
	// As upstream: the verbosity is parsed early, so that klog honours it while the
	// command is built.
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
