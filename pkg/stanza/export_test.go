package stanza

// WellFormed exposes the strict document check so the external tests can
// hold rendered output to the same rules as templates.
func WellFormed(doc []byte) error { return wellFormed(doc) }
