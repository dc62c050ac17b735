package announcement

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/announcer/announcer/pkg/metric"
)

// Top-level fields of the records, as this version writes them.
var (
	eventFields = []string{"id", "kind", "channel_id", "usernames", "template", "persist", "created_at", "source", "shard", "priority", "dry_run", "version"}
	batchFields = []string{"announcement_id", "shard", "seq", "node", "template", "persist", "first_inc_id", "recipients", "created_at", "priority", "version"}
)

// NewerVersionError is a record written for readers of a later version: this
// process must not act on it, nor dead-letter it. Its consumer retries it
// (the record stays uncommitted) until a process of the newer version, rolled
// out meanwhile, takes the partition over.
type NewerVersionError struct{ Version, Understood int }

func (e *NewerVersionError) Error() string {
	return fmt.Sprintf("record version %d: this process understands up to %d; waiting for a newer one to take it", e.Version, e.Understood)
}

// Retryable says the record is not at fault: it is handled again later.
func (e *NewerVersionError) Retryable() bool { return true }

// decodeTolerant decodes one JSON object into v. The common case, every field
// known, costs one strict decode; otherwise the record is decoded again
// ignoring what v has no field for, and those names are returned.
func decodeTolerant(p []byte, v any, known []string) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err != nil && strings.HasPrefix(err.Error(), "json: unknown field ") {
		// encoding/json has no typed error for unknown fields.
		dec = json.NewDecoder(bytes.NewReader(p))
		if err = dec.Decode(v); err == nil {
			return unknownFields(p, known), trailing(dec)
		}
	}
	if err != nil {
		return nil, err
	}
	return nil, trailing(dec)
}

// decodeRecord decodes the record p into v as decodeTolerant does, errors
// prefixed with what the record is, and refuses it with a *NewerVersionError
// when v's version (version points into v) is newer than understood.
func decodeRecord(p []byte, what string, v any, known []string, version *int, understood int) ([]string, error) {
	unknown, err := decodeTolerant(p, v, known)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if *version > understood {
		return nil, &NewerVersionError{Version: *version, Understood: understood}
	}
	return unknown, nil
}

func trailing(dec *json.Decoder) error {
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// unknownFields lists the top-level members of the object p not in known.
func unknownFields(p []byte, known []string) []string {
	dec := json.NewDecoder(bytes.NewReader(p))
	if _, err := dec.Token(); err != nil {
		return nil
	}
	var out []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return out
		}
		if k, _ := tok.(string); !slicesContains(known, k) {
			out = append(out, k)
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return out
		}
	}
	return out
}

func slicesContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Decoder decodes internal records as DecodeEvent and DecodeBatch do, and
// counts the fields it ignored: a newer writer during a rolling upgrade, or
// one that never got upgraded. A nil *Decoder decodes without counting.
type Decoder struct {
	unknown prometheus.Counter
}

// NewDecoder registers the counter on reg (as unknown_fields_total).
func NewDecoder(reg prometheus.Registerer) *Decoder {
	return &Decoder{unknown: metric.Must(reg).Counter("unknown_fields_total",
		"Fields of internal records this version does not know, ignored (a newer writer's).")}
}

// Event decodes an announcements record. An event that fails Check is
// returned with Check's error (its ignored fields counted).
func (d *Decoder) Event(p []byte) (Event, error) {
	var e Event
	unknown, err := decodeRecord(p, "announcement event", &e, eventFields, &e.Version, Version)
	if err != nil {
		return Event{}, err
	}
	d.count(unknown)
	return e, e.Check()
}

// Batch decodes a deliveries record.
func (d *Decoder) Batch(p []byte) (Batch, error) {
	b, fast := decodeBatchFast(p)
	var unknown []string
	var err error
	switch {
	case !fast:
		unknown, err = decodeRecord(p, "delivery batch", &b, batchFields, &b.Version, BatchVersion)
	case b.Version > BatchVersion:
		err = &NewerVersionError{Version: b.Version, Understood: BatchVersion}
	}
	if err == nil {
		err = b.check()
	}
	if err != nil {
		return Batch{}, err
	}
	d.count(unknown)
	return b, nil
}

// count adds the fields a record had and this version ignored.
func (d *Decoder) count(unknown []string) {
	if d != nil {
		d.unknown.Add(float64(len(unknown)))
	}
}
