// Command ingress is the front door of announcer: REST and Kafka input in,
// validated announcement events out to the announcements topic.
package main

import (
	"os"

	"github.com/announcer/announcer/pkg/boot"
	"github.com/announcer/announcer/pkg/config"
)

func main() { os.Exit(boot.Main(config.RoleIngress, os.Args[1:], os.Stderr, run, nil)) }
