/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// Check reads an OCI archive as a runtime would and returns what is wrong with the image it
// holds: not exactly one image, a user other than 65532:65532, another entrypoint, a shell or
// any file but its own, a file owned by root that is writable, or more than maxBytes stored.
func Check(path, entrypoint string, maxBytes int64) ([]string, error) {
	dir, err := os.MkdirTemp("", "oci-check-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if err := untar(path, dir); err != nil {
		return nil, err
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var problems []string
	if len(im.Manifests) != 1 {
		return []string{fmt.Sprintf("%d images in the archive, want 1", len(im.Manifests))}, nil
	}
	if im.Manifests[0].Annotations["io.containerd.image.name"] == "" {
		problems = append(problems, "no image name annotation (ctr would import it unnamed)")
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	if want := fmt.Sprintf("%d:%d", NonRoot, NonRoot); cfg.Config.User != want {
		problems = append(problems, fmt.Sprintf("user %q, want %q", cfg.Config.User, want))
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{entrypoint}) || len(cfg.Config.Cmd) > 0 {
		problems = append(problems, fmt.Sprintf("entrypoint %q cmd %q, want [%s] and no cmd", cfg.Config.Entrypoint, cfg.Config.Cmd, entrypoint))
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" {
		problems = append(problems, fmt.Sprintf("platform %s/%s, want linux/amd64", cfg.OS, cfg.Architecture))
	}
	size, err := storedSize(img)
	if err != nil {
		return nil, err
	}
	if size > maxBytes {
		problems = append(problems, fmt.Sprintf("%d bytes stored, more than %d", size, maxBytes))
	}
	want := map[string]bool{"etc": true, "etc/passwd": true, "etc/group": true, "etc/ssl": true, "etc/ssl/certs": true,
		"etc/ssl/certs/ca-certificates.crt": true, "home": true, "home/nonroot": true, "tmp": true, strings.TrimPrefix(entrypoint, "/"): true}
	rc := mutate.Extract(img)
	defer func() { _ = rc.Close() }()
	tr := tar.NewReader(rc)
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		h.Name = strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		seen[h.Name] = true
		switch {
		case !want[h.Name]:
			problems = append(problems, "unexpected file "+h.Name)
		case h.Name == strings.TrimPrefix(entrypoint, "/") && (h.Typeflag != tar.TypeReg || h.Mode&0o111 == 0):
			problems = append(problems, "the entrypoint is not an executable file")
		case h.Typeflag == tar.TypeReg && h.Mode&0o022 != 0:
			problems = append(problems, h.Name+" is writable by others than its owner")
		}
		if h.Name == "etc/passwd" {
			data, _ := io.ReadAll(tr)
			if !strings.Contains(string(data), fmt.Sprintf(":%d:%d:", NonRoot, NonRoot)) || strings.Contains(string(data), "/bin/sh") {
				problems = append(problems, "etc/passwd must name user 65532 and no login shell")
			}
		}
	}
	for name := range want {
		if !seen[name] {
			problems = append(problems, "missing "+name)
		}
	}
	slices.Sort(problems)
	return problems, nil
}

func untar(path, dir string) error {
	f, err := os.Open(path) //nolint:gosec // the caller's archive
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.Clean("/"+h.Name))
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if !strings.HasPrefix(target, filepath.Clean(dir)+string(filepath.Separator)) {
			return fmt.Errorf("archive entry %q leaves the directory", h.Name)
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil { //nolint:gosec // stays under dir: checked above
			return err
		}
		out, err := os.Create(target) //nolint:gosec // joined under dir after Clean
		if err != nil {
			return err
		}
		_, err = io.Copy(out, io.LimitReader(tr, 1<<30))
		if err := errors.Join(err, out.Close()); err != nil {
			return err
		}
	}
}
