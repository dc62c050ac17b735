package commands

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test of the package ends with no goroutine left behind: polls,
// questions and the progress bar included.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
