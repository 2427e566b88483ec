// pause is the process that holds a pod sandbox's namespaces: it sleeps until told to stop and, as
// PID 1 of the pod, reaps the zombies of processes that die in it. Built static by
// scripts/build-tools.sh --node and put into the local sandbox image (devtools/node.py).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
