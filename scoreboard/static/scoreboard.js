/* the browser client: coming next */
