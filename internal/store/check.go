package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// Check verifies the file (bbolt tx.Check) and meshca's own invariants:
// audit seq gapless from 1; mesh versions gapless from 1; every identity's
// CurrentSerial exists as a Cert of that identity; the identity index and the
// cert bucket agree; every sealed key opens; CASet serials exist; every join
// token belongs to a node; every holder record has its mirror and names a
// certificate of its identity and node; on etcd, the counters of P/last/ name the
// greatest keys. It returns nil or a joined error listing every problem
// found.
func (s *Store) Check(ctx context.Context) error {
	var problems []error
	err := s.View(ctx, func(tx *Tx) error {
		if b, ok := tx.kv.(boltKV); ok {
			for err := range b.btx.Check() {
				problems = append(problems, fmt.Errorf("bbolt: %w", err))
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		problems = append(problems, tx.checkSequence(bucketAudit, "audit seq", func(v []byte) (uint64, error) {
			var ev Event
			err := json.Unmarshal(v, &ev)
			return ev.Seq, err
		})...)
		problems = append(problems, tx.checkSequence(bucketMesh, "mesh version", func(v []byte) (uint64, error) {
			var m Mesh
			err := json.Unmarshal(v, &m)
			return m.Version, err
		})...)
		problems = append(problems, tx.checkCerts()...)
		problems = append(problems, tx.checkIdentities()...)
		problems = append(problems, tx.checkCAs()...)
		problems = append(problems, tx.checkJoinTokens()...)
		problems = append(problems, tx.checkHolderCerts()...)
		if e, ok := tx.kv.(*etcdTx); ok {
			problems = append(problems, e.checkLasts()...)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return errors.Join(problems...)
}

// checkSequence verifies that the 8-byte keys of bucket run 1, 2, 3... and
// that each value carries its own key.
func (tx *Tx) checkSequence(bucket []byte, what string, decode func([]byte) (uint64, error)) []error {
	var problems []error
	var want uint64 = 1
	_ = tx.scan(bucket, nil, nil, func(k, v []byte) error {
		if len(k) != 8 {
			problems = append(problems, fmt.Errorf("%s: malformed key %x", what, k))
			return nil
		}
		got := binary.BigEndian.Uint64(k)
		if got != want {
			problems = append(problems, fmt.Errorf("%s: gap: found %d, want %d", what, got, want))
		}
		want = got + 1
		inner, err := decode(v)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s %d: %w", what, got, err))
		} else if inner != got {
			problems = append(problems, fmt.Errorf("%s %d: record says %d", what, got, inner))
		}
		return nil
	})
	return problems
}

// checkCerts verifies that certs and certs_by_identity agree both ways and
// that every sealed key opens.
func (tx *Tx) checkCerts() []error {
	var problems []error
	_ = tx.scan(bucketCerts, nil, nil, func(k, v []byte) error {
		var rec certRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			problems = append(problems, fmt.Errorf("certificate %s: %w", k, err))
			return nil
		}
		if rec.Serial != string(k) {
			problems = append(problems, fmt.Errorf("certificate %s: record says serial %s", k, rec.Serial))
		}
		got, err := tx.kv.get(bucketCertsByID, certIndexKey(rec.Identity, rec.NotBefore, rec.Serial))
		if err != nil {
			problems = append(problems, fmt.Errorf("certificate %s: index: %w", k, err))
		} else if !bytes.Equal(got, k) {
			problems = append(problems, fmt.Errorf("certificate %s: missing from the index of identity %q", k, rec.Identity))
		}
		if _, err := tx.openCert(rec); err != nil {
			problems = append(problems, err)
		}
		return nil
	})
	_ = tx.scan(bucketCertsByID, nil, nil, func(k, serial []byte) error {
		var rec certRecord
		if err := tx.get(bucketCerts, serial, &rec); err != nil {
			problems = append(problems, fmt.Errorf("certificate index entry %x: serial %s: %w", k, serial, err))
			return nil
		}
		if !bytes.Equal(k, certIndexKey(rec.Identity, rec.NotBefore, rec.Serial)) {
			problems = append(problems, fmt.Errorf("certificate index entry %x: does not match certificate %s of %q", k, serial, rec.Identity))
		}
		return nil
	})
	return problems
}

func (tx *Tx) checkIdentities() []error {
	var problems []error
	_ = tx.scan(bucketIdentities, nil, nil, func(k, v []byte) error {
		var id Identity
		if err := json.Unmarshal(v, &id); err != nil {
			problems = append(problems, fmt.Errorf("identity %q: %w", k, err))
			return nil
		}
		if id.Name != string(k) {
			problems = append(problems, fmt.Errorf("identity %q: record says name %q", k, id.Name))
		}
		if id.CurrentSerial == "" {
			return nil
		}
		var rec certRecord
		if err := tx.get(bucketCerts, []byte(id.CurrentSerial), &rec); err != nil {
			problems = append(problems, fmt.Errorf("identity %q: current certificate %s: %w", k, id.CurrentSerial, err))
		} else if rec.Identity != id.Name {
			problems = append(problems, fmt.Errorf("identity %q: current certificate %s belongs to %q", k, id.CurrentSerial, rec.Identity))
		}
		return nil
	})
	return problems
}

func (tx *Tx) checkCAs() []error {
	var problems []error
	_ = tx.scan(bucketCAs, nil, nil, func(k, v []byte) error {
		var rec caRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			problems = append(problems, fmt.Errorf("CA %s: %w", k, err))
			return nil
		}
		if rec.Serial != string(k) {
			problems = append(problems, fmt.Errorf("CA %s: record says serial %s", k, rec.Serial))
		}
		if _, err := tx.openCA(rec); err != nil {
			problems = append(problems, err)
		}
		return nil
	})
	set, err := tx.CASet()
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		problems = append(problems, err)
	default:
		if err := tx.missingCAs(set); err != nil {
			problems = append(problems, err)
		}
	}
	return problems
}
