/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package allowlist

import "testing"

func TestLooksPersonal(t *testing.T) {
	personal := []string{
		"alice@acme.com", "https://x.y/z", "http://localhost:3080", "www.acme.com", "github.com/acme/repo", "acme-corp.com",
		"10.1.2.3", "fe80::1", "/home/alice", `C:\Users`, "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "a\x00b",
	}
	for _, s := range personal {
		if !LooksPersonal(s) {
			t.Errorf("%q should look personal", s)
		}
	}
	for _, s := range []string{"go", "typescript", "c++", "regexp", "5.3.0", "0.0.0+dev", "5.3.0-rc.1", "nav"} {
		if LooksPersonal(s) {
			t.Errorf("%q should not look personal", s)
		}
	}
}

func TestEveryListedEventHasAFeature(t *testing.T) {
	for _, n := range Names() {
		if FeatureOf(n) == "" {
			t.Errorf("%s has no feature", n)
		}
	}
	for _, required := range []string{"SearchSubmitted", "SearchResultsQueried", "SearchResultClicked", "ViewBlob", "ViewSearchResults",
		"goToDefinition", "findReferences", "hover", "codeintel.lsifHover", "SearchNotebookPageViewed", "search.latencies.regexp", "search.latencies.commit"} {
		if _, ok := Lookup(required); !ok {
			t.Errorf("%s is not allow-listed", required)
		}
	}
	if _, ok := Lookup("UserSignedUp"); ok {
		t.Error("an unlisted event is found")
	}
}
