package identity

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestKnownAuthority(t *testing.T) {
	for host, want := range map[string]bool{
		"":                                                true, // the SDK's default: the public cloud
		"https://login.microsoftonline.com/":              true,
		"https://LOGIN.microsoftonline.com":               true,
		"https://login.microsoftonline.us/":               true,
		"https://login.chinacloudapi.cn/":                 true,
		"https://login.stack.example/":                    false, // Azure Stack Hub: keep instance discovery
		"http://login.microsoftonline.com/":               false,
		"https://login.microsoftonline.com/adfs/":         false,
		"https://login.microsoftonline.com.evil.example/": false,
		"https://user@login.microsoftonline.com/":         false,
		"::not a url":                                     false,
	} {
		assert.Equal(t, want, KnownAuthority(host), "%q", host)
	}
}
