//go:build tools

// The node and client components of the pinned Kubernetes release, built beside kube-apiserver for the
// single-node cluster of the end-to-end test (`go build -o DIR k8s.io/kubernetes/cmd/...`).
package main

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
