package kafkabus

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/segmentio/kafka-go"
)

// kafka-go's per-message errors become the indices of the messages to write
// again, however the write's error was wrapped; anything else keeps them all.
func TestUnacknowledgedKeepsOnlyTheFailedRecords(t *testing.T) {
	records := []string{"a", "b", "c", "d"}
	down := kafka.NotEnoughReplicas
	for _, c := range []struct {
		name string
		err  error
		want []string
	}{
		{"written", nil, nil},
		{"one partition down", kafka.WriteErrors{nil, down, nil, down}, []string{"b", "d"}},
		{"wrapped", fmt.Errorf("storage: %w", kafka.WriteErrors{down, nil, nil, nil}), []string{"a"}},
		{"no per-message errors", errors.New("dial: connection refused"), records},
		{"errors of another write", kafka.WriteErrors{nil, down}, records},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Unacknowledged(records, Partial(c.err, len(records)))
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
	var partial *PartialWriteError
	var we kafka.WriteErrors
	err := Partial(kafka.WriteErrors{nil, down}, 2)
	if !errors.As(err, &partial) || !errors.As(err, &we) || we[1] != down {
		t.Fatalf("%v: not a partial write that still holds kafka-go's errors", err)
	}
	if got := Unacknowledged(records, &PartialWriteError{Failed: []int{1, 9}}); !slices.Equal(got, records) {
		t.Fatalf("indices beyond the records kept %q, want them all", got)
	}
}
