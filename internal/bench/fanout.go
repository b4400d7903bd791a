package bench

import (
	"context"
	"errors"
)

// runFanout, runStorm, runMemory: to be written.
func runFanout(ctx context.Context, env *Env) (*Report, error) {
	return nil, errors.New("not written yet")
}

func runStorm(ctx context.Context, env *Env) (*Report, error) {
	return nil, errors.New("not written yet")
}

func runMemory(ctx context.Context, env *Env) (*Report, error) {
	return nil, errors.New("not written yet")
}
