// Package kubeversion stamps the Kubernetes version into binaries built from the
// k8s.io/kubernetes module, as a release build does with -ldflags. Without it the
// components report v0.0.0-master: the API server fails Helm's kubeVersion check
// and the kubelet reports that as its Node's kubeletVersion.
package kubeversion

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	_ "unsafe" // for go:linkname

	"k8s.io/component-base/version"
)

//go:linkname gitVersion k8s.io/component-base/version.gitVersion
var gitVersion string

//go:linkname gitMajor k8s.io/component-base/version.gitMajor
var gitMajor string

//go:linkname gitMinor k8s.io/component-base/version.gitMinor
var gitMinor string

// Stamp sets the version from the k8s.io/kubernetes module this binary was built with.
func Stamp() error {
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
