// Command kube-apiserver is upstream's kube-apiserver, built from the pinned k8s.io/kubernetes module
// for Kilowatt's integration tests (see tests/README.md). It adds nothing of its own.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
