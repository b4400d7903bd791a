package bench

import (
	"context"
	"errors"
)

func runIssuance(ctx context.Context, env *Env) (*Report, error) {
	return nil, errors.New("not written yet")
}
