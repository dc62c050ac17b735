package announcement

// BadRecordError says a record can never be acted on, whatever is retried:
// its consumer dead-letters it with Reason. Label is a bounded metric label
// ("template", "poison"...). Every stage's use case returns this one type.
type BadRecordError struct{ Reason, Label string }

func (e *BadRecordError) Error() string { return "unusable record: " + e.Reason }

// RejectReason is why the record goes to the dead-letter topic.
func (e *BadRecordError) RejectReason() string { return e.Reason }

// RejectLabel is the dead-letter metric's reason label.
func (e *BadRecordError) RejectLabel() string { return e.Label }
