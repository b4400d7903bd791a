package envoycheck

import "errors"

// ErrInvalidConfig wraps every ParseEnvoy and ParseSDS error.
var ErrInvalidConfig = errors.New("invalid config")
