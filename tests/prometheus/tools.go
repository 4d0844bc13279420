//go:build tools

// Package tools pins Prometheus for the end-to-end test: Debian's prometheus package is built without
// Kubernetes service discovery, which is how clusters without the Prometheus Operator find the pods
// (`go build -o ... github.com/prometheus/prometheus/cmd/prometheus`).
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
