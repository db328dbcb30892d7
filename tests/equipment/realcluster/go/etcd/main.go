// etcd for bridge's real test cluster: the upstream server's own entry point, built from the
// published go.etcd.io/etcd/server/v3 module (the etcd repository's root module carries
// replace lines, so `go install` of it is refused).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
