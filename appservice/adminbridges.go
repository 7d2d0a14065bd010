package appservice

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/rs/zerolog"
)

// mountBridgeAdminRoutes adds every [AdminAPIProvider] bridge's endpoints to the admin API's mux,
// under AdminAPIPrefix/bridges/<bridge id>. A route with a bad method or path is logged and left
// out; it never stops the admin API.
func (svc *Service) mountBridgeAdminRoutes(mux *http.ServeMux, log zerolog.Logger) {
	for _, bridge := range svc.bridges {
		provider, ok := bridge.br.(AdminAPIProvider)
		if !ok {
			continue
		}
		for _, route := range provider.AdminRoutes() {
			if route.Method == "" || !strings.HasPrefix(route.Path, "/") || route.Handler == nil {
				log.Error().Str("bridge", bridge.id).Str("method", route.Method).Str("path", route.Path).
					Msg("Bridge admin route is invalid; leaving it out")
				continue
			}
			pattern := route.Method + " " + AdminAPIPrefix + "/bridges/" + bridge.id + route.Path
			if err := registerPattern(mux, pattern, route.Handler); err != nil {
				log.Error().Err(err).Str("bridge", bridge.id).Str("method", route.Method).Str("path", route.Path).
					Msg("Bridge admin route conflicts; leaving it out")
			}
		}
	}
}

// registerPattern is mux.HandleFunc, turning its panic on a bad or conflicting pattern into an
// error.
func registerPattern(mux *http.ServeMux, pattern string, handler http.HandlerFunc) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("invalid admin route pattern %q: %v", pattern, r)
		}
	}()
	mux.HandleFunc(pattern, handler)
	return nil
}
