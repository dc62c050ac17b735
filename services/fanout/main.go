// Command fanout resolves announcements into per-node delivery batches: channel
// members from MySQL filtered by Redis presence (or the user-activity REST API),
// every online user, or a users list.
package main

import (
	"os"

	"github.com/announcer/announcer/pkg/boot"
	"github.com/announcer/announcer/pkg/config"
)

func main() { os.Exit(boot.Main(config.RoleFanout, os.Args[1:], os.Stderr, run, nil)) }
