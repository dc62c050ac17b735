package kafkaio

import (
	"fmt"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/stanza"
)

// Decoder turns an announcements record into an event the use case may act
// on: the record is a trust boundary, so the template is validated here too —
// a template that ejabberd would reject must not become a million bad stanzas.
type Decoder struct {
	Template stanza.Options
}

// Decode parses and checks one record value.
func (d Decoder) Decode(p []byte) (announcement.Event, error) {
	ev, err := announcement.DecodeEvent(p)
	if err != nil {
		return announcement.Event{}, err
	}
	if _, err := stanza.Parse([]byte(ev.Template), d.Template); err != nil {
		return announcement.Event{}, fmt.Errorf("announcement event %s: template: %w", ev.ID, err)
	}
	return ev, nil
}
