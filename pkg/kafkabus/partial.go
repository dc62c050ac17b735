package kafkabus

import (
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// PartialWriteError is a write of which Kafka acknowledged only some
// messages (the partitions of the others failed): Failed are the indices of
// the others, ascending. Only those are written again, so a partial failure
// does not duplicate what is already durable.
type PartialWriteError struct {
	Failed []int
	Err    error
}

func (e *PartialWriteError) Error() string {
	return fmt.Sprintf("%d records not acknowledged: %v", len(e.Failed), e.Err)
}

func (e *PartialWriteError) Unwrap() error { return e.Err }

// Partial returns err, the outcome of a write of n messages, as a
// *PartialWriteError when kafka-go says which messages failed (a
// kafka.WriteErrors of n, nil for each acknowledged one), else as it is.
func Partial(err error, n int) error {
	var we kafka.WriteErrors
	if err == nil || !errors.As(err, &we) || len(we) != n {
		return err
	}
	partial := &PartialWriteError{Err: err}
	for i, e := range we {
		if e != nil {
			partial.Failed = append(partial.Failed, i)
		}
	}
	return partial
}

// Unacknowledged returns what of records, written in that order, a write
// that ended with err left to write again: none after nil, those a
// *PartialWriteError names, or all of them when err does not say.
func Unacknowledged[T any](records []T, err error) []T {
	if err == nil {
		return nil
	}
	var partial *PartialWriteError
	if !errors.As(err, &partial) {
		return records
	}
	rest := make([]T, 0, len(partial.Failed))
	for _, i := range partial.Failed {
		if i < 0 || i >= len(records) {
			return records // not a write of these records: trust none of it
		}
		rest = append(rest, records[i])
	}
	return rest
}
