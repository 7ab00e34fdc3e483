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

// Stamp sets the version from the k8s.io/kubernetes module this binary was built with,
// or, for a program that imports none of it (kubectl), from a staging module of the
// same release: k8s.io/kubectl v0.37.2 is Kubernetes v1.37.2.
func Stamp() error {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return errors.New("no build information in the binary")
	}
	staging := ""
	for _, dep := range info.Deps {
		v := dep.Version
		if dep.Replace != nil {
			v = dep.Replace.Version
		}
		switch dep.Path {
		case "k8s.io/kubernetes":
			return stamp(v)
		case "k8s.io/kubectl":
			staging = v
		}
	}
	if strings.HasPrefix(staging, "v0.") {
		return stamp("v1." + strings.TrimPrefix(staging, "v0."))
	}
	return errors.New("neither k8s.io/kubernetes nor k8s.io/kubectl is among the build's modules")
}

func stamp(v string) error {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return fmt.Errorf("unexpected Kubernetes version %q", v)
	}
	gitVersion, gitMajor, gitMinor = v, parts[0], parts[1]
	return version.SetDynamicVersion(v)
}
