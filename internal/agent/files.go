package agent

import (
	"os"

	"github.com/meshca/meshca/internal/agentfiles"
)

// fileWriter writes each identity's files (internal/agentfiles: the one
// writer and layout of them) when its certificate or the bundle changes,
// and removes those of an identity the node lost. It runs under the
// agent's lock, before a change is announced: a follower that sees a
// certificate in State finds it on disk.
type fileWriter struct {
	dir     string
	written map[string]string // identity -> serial written
	bundle  []byte
}

func (a *Agent) syncFiles(st State) {
	w := &a.files
	if w.written == nil {
		w.dir, w.written = a.cfg.FilesDir, map[string]string{}
		if err := os.MkdirAll(w.dir, agentfiles.DirMode); err != nil {
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
		kp, err := keyPEM(v.Key)
		if err == nil {
			err = agentfiles.Write(w.dir, v.Identity, v.ChainPEM, kp, st.BundlePEM)
		}
		if err != nil {
			a.log.Error("certificate files not written; the previous ones stay", logIdentity, v.Identity, logErr, err)
			continue
		}
		w.written[v.Identity] = v.Serial
	}
	for name := range w.written {
		if _, ok := st.SVID(name); !ok {
			delete(w.written, name)
			if err := agentfiles.Remove(w.dir, name); err != nil {
				a.log.Error("files of an identity no longer held not removed", logIdentity, name, logErr, err)
			}
		}
	}
	w.bundle = st.BundlePEM
}
