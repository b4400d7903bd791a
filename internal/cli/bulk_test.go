package cli

import "testing"

func TestParseIdentityLine(t *testing.T) {
	tests := []struct {
		line    string
		admin   bool
		wantErr bool
	}{
		{"ops admin", true, false},
		{"ops admin=true", true, false},
		{"ops admin=false", false, false},
		{"ops admin=no-thanks", false, true},
		{"web dns=a.local,b.local ttl=30m", false, false},
		{"web ttl=forever", false, true},
		{"web color=blue", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			req, err := parseIdentityLine(tt.line)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && req.Admin != tt.admin {
				t.Fatalf("admin = %v, want %v", req.Admin, tt.admin)
			}
		})
	}
}
