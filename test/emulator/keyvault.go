package emulator

import "net/http"

// PLACEHOLDER: replaced by the Key Vault implementation.
type keyVaultService struct{ *core }

func newKeyVaultService(c *core) *keyVaultService { return &keyVaultService{c} }

func (s *keyVaultService) serve(w http.ResponseWriter, r *http.Request, c Cloud, vault string) {
	http.Error(w, "not implemented", http.StatusNotImplemented)
}
