// Command archiver writes one rendered stanza per recipient of every
// persisted delivery batch (all nodes) to the storage topic(s), committing a
// batch only after the storage cluster acknowledged all of it.
package main

import (
	"os"

	"github.com/announcer/announcer/pkg/boot"
	"github.com/announcer/announcer/pkg/config"
)

func main() { os.Exit(boot.Main(config.RoleArchiver, os.Args[1:], os.Stderr, run, nil)) }
