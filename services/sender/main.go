// Command sender delivers the batches of one ejabberd node's deliveries topic
// over XEP-0114 component connections (or c2s sessions), committing each batch
// only after a ping fence proved ejabberd processed it.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/announcer/announcer/pkg/boot"
	"github.com/announcer/announcer/pkg/config"
)

func main() { os.Exit(boot.Main(config.RoleSender, os.Args[1:], os.Stderr, run, flags)) }

// flags adds -node, which overrides [sender] node (with a single node
// configured and none named, that node is served), and -component-name,
// which overrides [component] name (a replica with a component domain of
// its own, so ping results and bounces come back to it alone). Several
// nodes and none named is a config problem: -check-config says so, not
// the first start.
func flags(fs *flag.FlagSet) func(*config.Config) error {
	node := fs.String("node", "", "name of the ejabberd node this sender serves (overrides [sender] node)")
	name := fs.String("component-name", "", "the component's address, as ejabberd's listener names it (overrides [component] name)")
	return func(c *config.Config) error {
		if *node != "" {
			c.Sender.Node = *node
		}
		if *name != "" {
			c.Component.Name = *name
		}
		if c.Sender.Node != "" || len(c.Nodes) == 0 {
			return nil
		}
		if len(c.Nodes) == 1 {
			c.Sender.Node = c.Nodes[0].Name
			return nil
		}
		names := make([]string, len(c.Nodes))
		for i, n := range c.Nodes {
			names[i] = n.Name
		}
		return fmt.Errorf("[sender] node: not set, and %d nodes are configured %v: pass -node NAME or set [sender] node", len(names), names)
	}
}
