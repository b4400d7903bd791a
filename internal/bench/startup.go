package bench

import (
	"context"
	"errors"
)

func runStartup(ctx context.Context, env *Env) (*Report, error) {
	return nil, errors.New("not written yet")
}
