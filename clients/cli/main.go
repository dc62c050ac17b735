// Command announcer is the operator CLI of the announcer: it sends,
// previews, follows, lists and cancels announcements through the ingress
// REST API. See README.md.
package main

import (
	"context"
	"io"
	"os"

	"github.com/announcer/announcer/clients/cli/internal/commands"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is the whole program but the process: tests call it with their own streams.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return commands.Execute(ctx, args, commands.Env{
		Stdin:      stdin,
		Stdout:     stdout,
		Stderr:     stderr,
		Getenv:     os.Getenv,
		Interrupts: commands.SignalInterrupts,
	})
}
