// Command sender delivers the batches of one ejabberd node's deliveries topic
// over XEP-0114 component connections, committing each batch only after a
// ping fence proved ejabberd processed it.
package main

import (
	"os"

	"github.com/announcer/announcer/pkg/boot"
	"github.com/announcer/announcer/pkg/config"
)

func main() { os.Exit(boot.Main(config.RoleSender, os.Args[1:], os.Stderr, run, flags)) }
