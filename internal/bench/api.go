package bench

import (
	"context"
	"errors"
)

// runAPI: to be written (issuance through the admin API vs cfssl's server).
func runAPI(ctx context.Context, env *Env) (*Report, error) {
	return nil, errors.New("not written yet")
}
