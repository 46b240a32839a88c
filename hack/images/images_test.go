/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func buildTestImage(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "collector")
	cas := filepath.Join(dir, "cas.pem")
	if err := os.WriteFile(bin, []byte("\x7fELF not really"), 0o755); err != nil { //nolint:gosec // an executable on purpose
		t.Fatal(err)
	}
	if err := os.WriteFile(cas, []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "collector.oci.tar")
	if _, _, err := Build(BuildOptions{Binary: bin, Entrypoint: "/collector", Ref: "telemetry-collector:test", CACertificates: cas, Out: out}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBuiltImagePassesItsChecksAndIsReproducible(t *testing.T) {
	dir := t.TempDir()
	out := buildTestImage(t, dir)
	problems, err := Check(out, "/collector", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("a freshly built image fails its checks: %v", problems)
	}
	first, _ := os.ReadFile(out) //nolint:gosec // test file
	again := buildTestImage(t, t.TempDir())
	second, _ := os.ReadFile(again) //nolint:gosec // test file
	if !bytes.Equal(first, second) {
		t.Error("the same inputs gave a different archive: the build is not reproducible")
	}
	if problems, _ := Check(out, "/collector", 100); !strings.Contains(strings.Join(problems, ";"), "bytes stored") {
		t.Errorf("an image over its size bound passes: %v", problems)
	}
}

// TestCheckFindsWhatMustNotShip: the checks are what stands between a mistake and a shipped
// image running as root with a shell; each is made to fire.
func TestCheckFindsWhatMustNotShip(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func(v1.Image) (v1.Image, error)
		want   string
	}{
		"runs as root": {func(img v1.Image) (v1.Image, error) {
			cfg, _ := img.ConfigFile()
			cfg = cfg.DeepCopy()
			cfg.Config.User = "0"
			return mutate.ConfigFile(img, cfg)
		}, `user "0"`},
		"another entrypoint": {func(img v1.Image) (v1.Image, error) {
			cfg, _ := img.ConfigFile()
			cfg = cfg.DeepCopy()
			cfg.Config.Entrypoint = []string{"/bin/sh", "-c"}
			return mutate.ConfigFile(img, cfg)
		}, "entrypoint"},
		"a shell": {func(img v1.Image) (v1.Image, error) {
			return mutate.AppendLayers(img, layerWith(t, "bin/sh"))
		}, "unexpected file bin/sh"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			good := buildTestImage(t, dir)
			img := loadImage(t, good, dir)
			bad, err := tc.mutate(img)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "bad", "collector.oci.tar")
			writeArchive(t, bad, path)
			problems, err := Check(path, "/collector", 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(strings.Join(problems, ";"), tc.want) {
				t.Fatalf("problems %v do not mention %q", problems, tc.want)
			}
		})
	}
}

func layerWith(t *testing.T, name string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: 2, Typeflag: tar.TypeReg})
	_, _ = tw.Write([]byte("#!"))
	_ = tw.Close()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func loadImage(t *testing.T, archive, dir string) v1.Image {
	t.Helper()
	unpacked := filepath.Join(dir, "unpacked")
	if err := untar(archive, unpacked); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(unpacked)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := idx.IndexManifest()
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func writeArchive(t *testing.T, img v1.Image, out string) {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"io.containerd.image.name": "docker.io/library/x:y"})); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tarDir(dir, out); err != nil {
		t.Fatal(err)
	}
}
