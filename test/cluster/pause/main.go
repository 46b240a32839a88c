/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command pause is the test cluster's sandbox ("pause") container: it holds a pod's namespaces
// and does nothing until it is told to stop. No pause image can be pulled here, so the test
// cluster builds this one (hack/images one) and imports it into containerd.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
