//go:build tools

// Package tools pins CoreDNS, the cluster DNS of the end-to-end test's single-node cluster
// (`go build -o ... github.com/coredns/coredns`).
package tools

import _ "github.com/coredns/coredns"
