package registry

// conflict is an error worded for its case that still matches ErrExists
// (a 409 at the API), without "already exists" tacked on to a message
// that says something else.
type conflict string

func (c conflict) Error() string        { return string(c) }
func (c conflict) Is(target error) bool { return target == ErrExists }
