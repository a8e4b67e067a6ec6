package emulator

import "net/http"

// PLACEHOLDER: replaced by the IMDS implementation.
type imdsService struct{ *core }

func newIMDSService(c *core) *imdsService { return &imdsService{c} }

func (s *imdsService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	http.Error(w, "not implemented", http.StatusNotImplemented)
}
