package kafkaio

import (
	"context"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	consumer "github.com/announcer/announcer/pkg/kafkain"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

// Resolver is the use case.
type Resolver interface {
	Resolve(ctx context.Context, ev announcement.Event) (audience.Result, error)
}

// Handler translates an announcements record for the use case; pkg/kafkain runs the
// consumer around it (bounded in flight, offsets committed in partition order only after
// every batch of the record is acked, undecodable records dead-lettered).
type Handler struct {
	uc    Resolver
	dec   Decoder
	retry backoff.Policy
	log   zerolog.Logger
	// done, if set, sees every event once all its batches are acked (tests, the benchmark).
	done func(announcement.Event, audience.Result)
}

// NewHandler builds the handler.
func NewHandler(uc Resolver, dec Decoder, retry backoff.Policy, log zerolog.Logger, done func(announcement.Event, audience.Result)) *Handler {
	return &Handler{uc: uc, dec: dec, retry: retry, log: log, done: done}
}

// Handle is a pkg/kafkain Handler.
func (h *Handler) Handle(ctx context.Context, m kafka.Message) error {
	ev, err := h.dec.Decode(m.Value)
	if err != nil {
		return &consumer.Reject{Reason: err.Error()}
	}
	var res audience.Result
	// Resolve waits out its dependencies itself; what is left here ends only with ctx.
	err = backoff.Retry(ctx, h.retry, func() error {
		var err error
		res, err = h.uc.Resolve(ctx, ev)
		return err
	}, func(err error, attempt int) {
		if attempt == 1 || attempt%10 == 0 {
			h.log.Warn().Err(err).Str("announcement", ev.ID).Int("attempt", attempt).Msg("resolve failed; retrying")
		}
	})
	if err != nil {
		return err
	}
	if h.done != nil {
		h.done(ev, res)
	}
	return nil
}
