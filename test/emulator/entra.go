package emulator

import "net/http"

// PLACEHOLDER: replaced by the Entra ID implementation.
type entraService struct{ *core }

func newEntraService(c *core) *entraService { return &entraService{c} }

func (s *entraService) serve(w http.ResponseWriter, r *http.Request, c Cloud) {
	http.Error(w, "not implemented", http.StatusNotImplemented)
}
