// Command etcd is etcd's own entry point, built from the etcd server module that Kubernetes
// itself pins, so the local cluster runs the etcd release its Kubernetes version is tested with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
