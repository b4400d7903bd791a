package agent

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshca/meshca/internal/atomicfile"
)

// File names under Config.FilesDir/<identity>/.
const (
	CertFile   = "cert.pem"   // certificate chain, leaf first
	KeyFile    = "key.pem"    // the identity's private key (0600)
	BundleFile = "bundle.pem" // trust bundle
)

// fileWriter writes each identity's files when its certificate or the
// bundle changes, and removes those of an identity the node lost. It runs
// under the agent's lock, before a change is announced: a follower that
// sees a certificate in State finds it on disk.
type fileWriter struct {
	dir     string
	written map[string]string // identity -> serial written
	bundle  []byte
}

func (a *Agent) syncFiles(st State) {
	w := &a.files
	if w.written == nil {
		w.dir, w.written = a.cfg.FilesDir, map[string]string{}
		if err := os.MkdirAll(w.dir, 0o700); err != nil {
			a.log.Error("files directory not created", logErr, err)
			return
		}
	}
	if st.BundlePEM == nil {
		return // written once meshca's bundle arrives
	}
	bundleChanged := string(w.bundle) != string(st.BundlePEM)
	for _, v := range st.SVIDs {
		if w.written[v.Identity] == v.Serial && !bundleChanged {
			continue
		}
		if err := w.writeIdentity(v, st.BundlePEM); err != nil {
			a.log.Error("certificate files not written; the previous ones stay", logIdentity, v.Identity, logErr, err)
			continue
		}
		w.written[v.Identity] = v.Serial
	}
	for name := range w.written {
		if _, ok := st.SVID(name); !ok {
			delete(w.written, name)
			if err := os.RemoveAll(filepath.Join(w.dir, filepath.FromSlash(name))); err != nil {
				a.log.Error("files of an identity no longer held not removed", logIdentity, name, logErr, err)
			}
		}
	}
	w.bundle = st.BundlePEM
}

// writeIdentity writes the bundle first, then the key, then the
// certificate: a reader that sees the new certificate finds the key and
// the roots it needs.
func (w *fileWriter) writeIdentity(v SVID, bundle []byte) error {
	dir := filepath.Join(w.dir, filepath.FromSlash(v.Identity))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	kp, err := keyPEM(v.Key)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{BundleFile, bundle}, {KeyFile, kp}, {CertFile, v.ChainPEM}} {
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}
