package atomicwriter_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/kvnode/kvnode/pkg/atomicwriter"
)

func ExampleWrite() {
	dir, err := os.MkdirTemp("", "volume")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	payload := map[string]atomicwriter.File{
		"tls.crt":      {Data: []byte("-----BEGIN CERTIFICATE-----\n...")},
		"tls.key":      {Data: []byte("-----BEGIN PRIVATE KEY-----\n..."), Mode: 0o600},
		"chain/ca.pem": {Data: []byte("-----BEGIN CERTIFICATE-----\n...")},
	}
	changed, err := atomicwriter.Write(dir, payload, atomicwriter.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("first write changed:", changed)

	for _, name := range []string{"tls.crt", "chain"} {
		target, _ := os.Readlink(filepath.Join(dir, name))
		fmt.Printf("%s -> %s\n", name, target)
	}

	// kubelet publishes again every minute or so; an identical payload
	// writes nothing.
	changed, err = atomicwriter.Write(dir, payload, atomicwriter.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("second write changed:", changed)

	files, err := atomicwriter.Read(dir)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("tls.key mode %v\n", files["tls.key"].Mode)
	// Output:
	// first write changed: true
	// tls.crt -> ..data/tls.crt
	// chain -> ..data/chain
	// second write changed: false
	// tls.key mode -rw-------
}
