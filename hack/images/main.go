/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command images builds the project's container images without a container engine, and checks
// them. Each image is one static binary on an empty base: a layer with the binary, the CA
// certificates, /etc/passwd and /etc/group naming the non-root user 65532, and an empty /tmp;
// no shell, no package manager. The output is an OCI image layout in a tar file (an "OCI
// archive"), which `ctr images import`, `skopeo copy oci-archive:...` and `crane push` read.
//
// Why go-containerregistry and not ko or buildah: no base image can be pulled here, and the
// image has nothing a base would add but the CA bundle and two lines of passwd; ko needs a base
// image and buildah a container storage and root. go-containerregistry (the library ko is built
// on) assembles the image from files directly, reproducibly: fixed timestamps and owners, so the
// same binaries always give the same digest.
//
//	images build --bin bin --out bin/images --tag dev
//	images check bin/images/*.oci.tar
//	images one --binary F --ref repo:tag --out F.oci.tar   (any static binary: the test cluster's pause image)
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Image describes one of the project's images.
type Image struct {
	// Binary is the file name under --bin, and the entrypoint /<Binary>.
	Binary string
	// Repository is the image name the manifests refer to.
	Repository string
	// MaxBytes bounds the image's compressed size (check fails above it).
	MaxBytes int64
}

// Images are the three images the project ships.
var Images = []Image{
	{Binary: "manager", Repository: "telemetry-operator", MaxBytes: 40 << 20},
	{Binary: "collector", Repository: "telemetry-collector", MaxBytes: 40 << 20},
	{Binary: "receiver", Repository: "telemetry-receiver", MaxBytes: 40 << 20},
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: images build|check ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = buildCmd(os.Args[2:])
	case "check":
		err = checkCmd(os.Args[2:])
	case "one":
		err = oneCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (build, check or one)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func buildCmd(args []string) error {
	fs := flag.NewFlagSet("build", flag.ExitOnError)
	bin := fs.String("bin", "bin", "Directory with the static manager, collector and receiver binaries.")
	out := fs.String("out", "bin/images", "Directory to write <binary>.oci.tar into.")
	tag := fs.String("tag", "dev", "Image tag.")
	cas := fs.String("ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to put at /etc/ssl/certs/ca-certificates.crt.")
	_ = fs.Parse(args)
	if err := os.MkdirAll(*out, 0o750); err != nil {
		return err
	}
	for _, im := range Images {
		path := filepath.Join(*out, im.Binary+".oci.tar")
		ref := im.Repository + ":" + *tag
		digest, size, err := Build(BuildOptions{Binary: filepath.Join(*bin, im.Binary), Entrypoint: "/" + im.Binary,
			Ref: ref, CACertificates: *cas, Out: path})
		if err != nil {
			return fmt.Errorf("%s: %w", im.Binary, err)
		}
		fmt.Printf("%-28s %s  %5.1f MiB  %s\n", ref, digest, float64(size)/(1<<20), path)
	}
	return nil
}

// oneCmd builds one image of any static binary, the same way as the project's images.
func oneCmd(args []string) error {
	fs := flag.NewFlagSet("one", flag.ExitOnError)
	bin := fs.String("binary", "", "The static binary; it becomes the entrypoint /<its file name>.")
	ref := fs.String("ref", "", "Image name, repository:tag.")
	out := fs.String("out", "", "The .oci.tar file to write.")
	cas := fs.String("ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to put at /etc/ssl/certs/ca-certificates.crt.")
	_ = fs.Parse(args)
	if *bin == "" || *out == "" || !strings.Contains(*ref, ":") {
		return fmt.Errorf("one: --binary, --out and --ref repository:tag are required")
	}
	digest, _, err := Build(BuildOptions{Binary: *bin, Entrypoint: "/" + filepath.Base(*bin), Ref: *ref, CACertificates: *cas, Out: *out})
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", *ref, digest, *out)
	return nil
}

func checkCmd(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("check: name the .oci.tar files")
	}
	var failed []string
	for _, path := range args {
		base := strings.TrimSuffix(filepath.Base(path), ".oci.tar")
		var want *Image
		for i := range Images {
			if Images[i].Binary == base {
				want = &Images[i]
			}
		}
		if want == nil {
			return fmt.Errorf("%s is not one of the project's images", path)
		}
		problems, err := Check(path, "/"+want.Binary, want.MaxBytes)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(problems) > 0 {
			failed = append(failed, path+": "+strings.Join(problems, "; "))
			continue
		}
		fmt.Printf("ok  %s: user 65532, entrypoint /%s, no shell, only its own files\n", path, want.Binary)
	}
	if len(failed) > 0 {
		return fmt.Errorf("checks failed:\n%s", strings.Join(failed, "\n"))
	}
	return nil
}
