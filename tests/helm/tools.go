//go:build tools

// Package tools pins the helm CLI the chart tests build (`go build -o ... helm.sh/helm/v3/cmd/helm`).
package tools

import _ "helm.sh/helm/v3/cmd/helm"
