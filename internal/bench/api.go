package bench

import (
	"context"
	"errors"
	"io"
)

// runAPI: to be written (issuance through the admin API vs cfssl's server).
func runAPI(ctx context.Context, env *Env) (*Report, error) {
	return nil, errors.New("not written yet")
}

func workCFSSLServe(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	return errors.New("not written yet")
}
